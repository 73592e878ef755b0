"""The command line as a user meets it, for runs: the default command, the README's quickstart, real launches."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from commandline import cli, free_port
from conftest import ROOT, base_recipe, write_jsonl
from test_train import FORMATS


def test_run_is_the_default_command_and_bad_data_exits_2(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"body": "x"}])
    result = cli(str(recipe_file(base_recipe(tmp_path))))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/data/train: no column 'text'" in result.stderr


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The README's quickstart: trains, prints the summary, and the eval loss clearly falls."""
    result = cli("recipes/quickstart.json", "--set", f"output.dir={tmp_path / 'qs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run 'quickstart' finished" in result.stdout
    record = json.loads((tmp_path / "qs" / "run.json").read_text())
    evals = [h["eval_loss"] for h in record["history"] if "eval_loss" in h]
    assert evals[0] > 5.0 and evals[-1] < 0.5, evals  # ln(261) = 5.56 at random init
    assert record["status"] == "finished"
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    assert before["exact_match"] < 0.05 and after["exact_match"] > 0.5, (before, after)
    assert "| exact_match | 0 |" in (tmp_path / "qs" / "report.md").read_text()
    assert (tmp_path / "qs" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path, recipe_file):
    """The same entry point under `accelerate launch`, with two data-parallel processes (gloo on CPU)."""
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    path = recipe_file(base_recipe(tmp_path, training={"max_steps": 3}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "runner", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["hardware"]["world_size"] == 2
    assert record["status"] == "finished"
    assert result.stdout.count("finished in") == 1, "only the main process reports and writes"
