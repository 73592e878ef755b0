"""report.md and loss_curves.png from hand-built run records: no training needed."""
from __future__ import annotations

import json

import subprocess
import sys

from runner.records.report import loss_curves_png, metric_table, render_report, write_report
from conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"loss": 3.2, "learning_rate": 2e-4, "epoch": 0.2, "step": 50},
    {"loss": 2.6, "learning_rate": 1.5e-4, "epoch": 0.4, "step": 100},
    {"eval_loss": 2.4, "eval_runtime": 1.5, "epoch": 0.4, "step": 100},
    {"loss": 2.1, "learning_rate": 1e-4, "epoch": 0.6, "step": 150},
    {"loss": 1.9, "learning_rate": 5e-5, "epoch": 0.8, "step": 200},
    {"eval_loss": 2.0, "eval_runtime": 1.4, "epoch": 0.8, "step": 200},
    {"train_runtime": 120.0, "train_loss": 2.45, "epoch": 0.8, "step": 200},
]

RECIPE = {
    "name": "qwen-lora",
    "task": "sft",
    "model": {"name_or_path": "Qwen/Qwen2.5-0.5B", "dtype": "bfloat16"},
    "peft": {"method": "lora", "r": 16, "lora_alpha": 32},
    "data": {"format": "messages"},
}

METRICS = {
    "before": {"exact_match": 0.0, "eval_loss": 2.5,
               "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[3, 7], [6, 4]]}},
    "after": {"exact_match": 0.88, "eval_loss": 1.25,
              "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[9, 1], [2, 8]]},
              "per_class": {"neg": {"precision": 0.8182, "recall": 0.9}, "pos": {"precision": 0.8889, "recall": 0.8}}},
    "retention": {"before": {"hellaswag_acc": 0.5}, "after": {"hellaswag_acc": 0.4875}},
}


def manifest(**changes) -> dict:
    base = {
        "name": "qwen-lora", "status": "finished",
        "started_at": "2025-01-01T10:00:00+00:00", "finished_at": "2025-01-01T10:02:05+00:00",
        "seconds": 125.4, "output_dir": "runs/qwen-lora", "recipe_file": "recipes/sft_lora_chat.json",
        "versions": {"python": "3.12.1", "torch": "2.5.1", "bitsandbytes": None},
        "hardware": {"platform": "Linux-x86_64", "cpu_count": 32, "gpus": ["NVIDIA H100"] * 4, "bf16": True,
                     "world_size": 4},
        "parameters": {"total": 500_000_000, "trainable": 4_400_000, "trainable_share": 0.0088},
        "examples": {"train": 20000, "eval": 500},
        "trainer_config": {"learning_rate": 2e-4, "max_steps": -1, "num_train_epochs": 1,
                           "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
                           "max_length": 2048, "bf16": True},
        "history": HISTORY,
    }
    return {**base, **changes}


def test_loss_curves_png_is_a_real_image(tmp_path):
    from matplotlib.image import imread

    path = loss_curves_png(HISTORY, tmp_path / "loss_curves.png")
    assert path == tmp_path / "loss_curves.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    height, width, channels = imread(path).shape
    assert (width, height, channels) == (640, 400, 4)  # RGBA at the figure size and dpi report.py sets
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_no_loss_logged_means_no_png(tmp_path):
    history = [{"train_runtime": 1.0, "train_loss": 0.5, "step": 2}]
    assert loss_curves_png(history, tmp_path / "loss_curves.png") is None
    assert loss_curves_png([], tmp_path / "loss_curves.png") is None
    assert not (tmp_path / "loss_curves.png").exists()


def test_metric_table_rows_show_before_after_and_signed_change():
    table = metric_table(METRICS)
    assert "| metric | before | after | change |" in table
    assert "| exact_match | 0 | 0.88 | +0.88 |" in table
    assert "| eval_loss | 2.5 | 1.25 | -1.25 |" in table
    assert "| hellaswag_acc | 0.5 | 0.4875 | -0.0125 |" in table  # retention, same layout
    assert "confusion_matrix" not in table and "| per_class" not in table  # nested values get their own tables


def test_metric_table_renders_confusion_matrix_and_per_class():
    table = metric_table(METRICS)
    assert "| true \\ predicted | neg | pos |" in table
    assert "| neg | 9 | 1 |\n| pos | 2 | 8 |" in table  # after
    assert "| neg | 3 | 7 |\n| pos | 6 | 4 |" in table  # before
    assert "| class | precision | recall |" in table
    assert "| neg | 0.8182 | 0.9 |" in table


def test_report_key_settings_show_the_batch_arithmetic():
    text = render_report(manifest(), RECIPE, METRICS, "loss_curves.png")
    assert text.startswith("# Run report: qwen-lora (finished)")
    assert "8 x 2 x 4 = 64" in text  # per device x accumulation x world size
    for expected in ("task: sft", "model: Qwen/Qwen2.5-0.5B", "tuning method: lora (r=16, alpha=32)",
                     "data format: messages", "examples: 20000 train, 500 eval", "learning rate: 0.0002",
                     "length: 1 epochs (ran 200 steps)", "max_length: 2048", "precision: bf16",
                     "wall time: 125.4 s (2m 05s)", "![loss curves](loss_curves.png)",
                     "4,400,000 trainable of 500,000,000 (0.88%)", "| torch | 2.5.1 |",
                     "| bitsandbytes | not installed |", "GPUs: NVIDIA H100, NVIDIA H100"):
        assert expected in text, expected


def test_max_steps_wins_over_epochs_as_in_transformers():
    config = {**manifest()["trainer_config"], "max_steps": 600, "fp16": True, "bf16": False}
    text = render_report(manifest(trainer_config=config), RECIPE, METRICS, None)
    assert "length: max_steps 600 (ran 200 steps)" in text
    assert "precision: fp16" in text
    assert "![loss curves]" not in text


def test_write_report_writes_png_and_markdown(tmp_path):
    written = write_report(tmp_path, manifest(), RECIPE, METRICS)
    assert written == {"report": tmp_path / "report.md", "loss_curves": tmp_path / "loss_curves.png"}
    assert written["loss_curves"].read_bytes().startswith(PNG_SIGNATURE)
    text = written["report"].read_text()
    assert "![loss curves](loss_curves.png)" in text
    assert "| exact_match | 0 | 0.88 | +0.88 |" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curves.png", "report.md"]


def test_failed_run_without_history_or_baseline_still_renders(tmp_path):
    failed = manifest(status="failed", error="RuntimeError: CUDA out of memory", history=[], examples={"train": 10})
    for key in ("seconds", "finished_at", "parameters", "versions", "hardware"):
        failed.pop(key)
    recipe = {"model": {"name_or_path": "tiny"}, "data": {"format": "text"}}
    written = write_report(tmp_path, failed, recipe, {"before": None, "after": {"exact_match": 0.5}})
    assert "loss_curves" not in written and not (tmp_path / "loss_curves.png").exists()
    text = written["report"].read_text()
    assert "# Run report: qwen-lora (failed)" in text
    assert "| exact_match | - | 0.5 | - |" in text
    assert "error: `RuntimeError: CUDA out of memory`" in text
    assert "wall time: not recorded" in text and "tuning method: none" in text and "examples: 10 train, - eval" in text
    assert "8 x 2 x 1 = 16" in text  # no world size recorded: one process


def test_a_report_without_metrics_says_so():
    text = render_report({"name": "x"}, {}, {}, None)
    assert "No metrics recorded." in text and "global batch: -" in text


def test_importing_the_module_does_not_import_matplotlib():
    code = "import runner.records.report, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_record_that_cannot_be_rendered_keeps_the_run_and_the_other_records(tmp_path, capsys):
    """A renderer bug (a KeyError in the report) is said and recorded; the run stays finished, run.json is written."""
    from runner.records import outputs

    manifest = {"runner": "recipe-runner", "name": "t", "status": "finished", "started_at": "x", "command": "x",
                "recipe_file": "r.json", "output_dir": str(tmp_path), "versions": {}}
    outputs.write_records(tmp_path, manifest, {
        "report.md": lambda: {}["missing"],
        "metrics.json": lambda: outputs.write_json(tmp_path / "metrics.json", {"after": {}}),
    })
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["status"] == "finished" and saved["records_not_rendered"] == ["report.md (KeyError: 'missing')"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"after": {}}
    assert "could not render report.md (KeyError: 'missing'): a bug in the runner" in capsys.readouterr().err
