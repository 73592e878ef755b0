"""The plan's DeepSpeed JSON check (runner.plan.deepspeed_json) side by side with what transformers itself flags,
and the same refusal through plan and through a launched run.
"""
from __future__ import annotations

import copy

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, base_recipe, write_json, write_jsonl
from runner.launch import launcher as launch
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.plan.topology import Topology
from commandline import cli, free_port

CONFIGS = ROOT / "accelerate_configs"


def _user_deepspeed(folder, **sections) -> Topology:
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "zero_optimization": {"stage": 2}, **sections}
    write_json(folder / "ds.json", config)
    return Topology(2, 1, "deepspeed", 2, zero3_save_16bit_model=False, deepspeed_config_file=str(folder / "ds.json"))


@pytest.mark.parametrize("sections", [
    {},
    {"train_micro_batch_size_per_gpu": 4}, {"train_micro_batch_size_per_gpu": "4"}, {"train_micro_batch_size_per_gpu": 3},
    {"train_batch_size": 4}, {"train_batch_size": 8}, {"gradient_accumulation_steps": 2}, {"gradient_clipping": 1},
    {"gradient_clipping": 0.5}, {"optimizer": {"type": "AdamW", "params": {"lr": 0.002, "betas": [0.9, 0.999]}}},
    {"optimizer": {"type": "AdamW", "params": {"lr": 0.001, "eps": 1e-6, "weight_decay": "auto"}}},
    {"bf16": {"enabled": False}}, {"bf16": {"enabled": "false"}}, {"bf16": {"enabled": True}}, {"fp16": {"enabled": "auto"}},
])
def test_hand_set_deepspeed_values_are_flagged_exactly_when_transformers_flags_them(tmp_path, recipe_file, sections):
    """transformers' own check (HfTrainerDeepSpeedConfig.trainer_config_process, run at the first step) side by side
    with the plan's, on the same recipe and one process."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from runner.plan import deepspeed_json

    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path, training={"learning_rate": 0.002, "bf16": False}))))
    config = plan["trainer"]["config"]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **{
        k: config[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm",
                               "learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "bf16", "fp16")})
    theirs = HfTrainerDeepSpeedConfig({"zero_optimization": {"stage": 2}, **copy.deepcopy(sections)})
    theirs.trainer_config_process(args)
    topology = _user_deepspeed(tmp_path, **sections)
    topology = Topology(1, 1, "deepspeed", 2, deepspeed_config_file=topology.deepspeed_config_file)
    ours = deepspeed_json._mismatches(plan["recipe"], topology, json.loads((tmp_path / "ds.json").read_text()), "ds.json")
    assert bool(ours) == bool(theirs.mismatches), (ours, theirs.mismatches)
    assert len(ours) == len(theirs.mismatches)


@pytest.mark.slow
def test_plan_finds_what_the_first_step_would_have_failed_on(tmp_path, recipe_file):
    """The same user JSON through plan and through a launched run: both refuse it, the run before the model loads
    (without the check transformers stops it at the first training step)."""
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i}"} for i in range(8)])
    path = recipe_file(base_recipe(tmp_path))
    _user_deepspeed(tmp_path, train_micro_batch_size_per_gpu=3)
    (tmp_path / "ds.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
                                      f"deepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
                                      "num_processes: 1\n")
    planned = cli("plan", str(path), "--accelerate-config", str(tmp_path / "ds.yaml"))
    assert planned.returncode == 2
    assert "/training/per_device_train_batch_size: ds.json sets train_micro_batch_size_per_gpu = 3, the recipe 4" \
        in planned.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ran = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch.launcher_args(tmp_path / "ds.yaml", 1, 1),
                          "--main_process_port", str(free_port()), "-m", "runner", "run", str(path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode != 0 and "ds.json sets train_micro_batch_size_per_gpu = 3" in ran.stderr
    assert not (tmp_path / "run").exists(), "refused before the model loaded: nothing written"
