"""The schema's names are real in the libraries (TRL/transformers configs, peft's LoraConfig), and the wheel carries
the schema."""
from __future__ import annotations

import dataclasses

import pytest

from runner.recipe import schema
from conftest import ROOT


@pytest.mark.parametrize("task", ["sft", "pretrain", "dpo", "classification"])
def test_training_keys_are_real_config_fields(task):
    """TRL renames things (max_seq_length -> max_length): a stale key must fail here, not in a user's run."""
    from runner.plan.tasks import TASKS
    from runner.train.task_code import TASK_CODE

    spec = TASKS[task]
    fields = {f.name for f in dataclasses.fields(TASK_CODE[task].config_class())}
    root = schema.load_schema()
    ref, = [p["then"]["properties"]["training"] for p in root["allOf"]
            if p["if"]["properties"]["task"]["const"] == task]
    keys = set(schema.known_keys(schema.resolve(ref)))
    # runner keys may share a config field's name (assistant_only_loss: the runner masks chat turns itself)
    assert keys - fields <= set(spec.runner_keys) <= keys


def test_enums_are_values_the_libraries_accept():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    training = schema.load_schema()["$defs"]["training_common"]["properties"]
    assert set(training["optim"]["enum"]) - {None} <= {o.value for o in OptimizerNames}  # null: a fast default
    assert set(training["lr_scheduler_type"]["enum"]) <= {s.value for s in SchedulerType}


def test_lora_keys_are_real_loraconfig_fields():
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert set(schema.load_schema()["$defs"]["lora"]["properties"]) <= fields


@pytest.mark.slow
def test_installed_wheel_carries_the_schema(tmp_path):
    """An installed `runner` finds its schema without the source tree."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    wheel, = tmp_path.glob("recipe_runner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "runner/schemas/recipe.schema.json" in zf.namelist()
        zf.extractall(tmp_path / "site")
    probe = "import runner.recipe.schema as s; p = s.schema_path(); print(p); assert 'site' in str(p); s.load_schema()"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "site" / "runner" / "schemas" / "recipe.schema.json")
