"""The schema itself: well-formed, documented, closed, defaults valid, names real in the libraries."""
from __future__ import annotations

import dataclasses

import pytest
from jsonschema import Draft202012Validator

from runner.recipe import docs
from runner.recipe import schema
from conftest import ROOT

OPEN_MAPS = {"config_overrides"}  # free-form maps of Hugging Face config keys, checked against the config


def walk(sub, path=()):
    """Yield (path, subschema) for every schema object in the tree."""
    if isinstance(sub, dict):
        yield path, sub
        for key, value in sub.items():
            if key in ("properties", "$defs"):
                for name, child in value.items():
                    yield from walk(child, path + (name,))
            elif key in ("allOf", "anyOf", "oneOf"):
                for i, child in enumerate(value):
                    yield from walk(child, path + (f"{key}[{i}]",))
            elif key in ("then", "else", "if", "items", "additionalProperties", "not"):
                yield from walk(value, path + (key,))


def test_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(schema.load_schema())
    assert schema.load_schema()["$schema"].endswith("2020-12/schema")


def test_every_property_has_a_description():
    missing = [
        path + (name,)
        for path, sub in walk(schema.load_schema())
        for name, prop in sub.get("properties", {}).items()
        if "description" not in prop and "description" not in schema.resolve(prop)
        and path[-1:] != ("if",)
    ]
    assert missing == []


MERGED = {"lora", "partial", "training_common", "prompt_tuning", "prefix_tuning", "ia3", "bnb_4bit", "bnb_8bit"}
# (only used inside closed parents: peft, model.quantization, training_<task>)


def test_every_object_is_closed():
    open_objects = [
        path for path, sub in walk(schema.load_schema())
        if sub.get("type") == "object" and path[-1:] and path[-1] not in OPEN_MAPS | MERGED
        and sub.get("additionalProperties") is not False and sub.get("unevaluatedProperties") is not False
        and path != ("training",)  # closed by the task's branch: see the next test
    ]
    assert open_objects == []


def test_every_task_closes_its_training_section():
    root = schema.load_schema()
    tasks = {part["if"]["properties"]["task"]["const"]: part["then"]["properties"]["training"]
             for part in root["allOf"]}
    assert set(tasks) == set(root["properties"]["task"]["enum"])
    for task, ref in tasks.items():
        assert schema.resolve(ref)["unevaluatedProperties"] is False, task


def test_every_default_validates_against_its_own_subschema():
    checked = 0
    for path, sub in walk(schema.load_schema()):
        for name, prop in sub.get("properties", {}).items():
            resolved = schema.resolve(prop)
            if "default" in resolved:
                assert schema.is_valid(resolved["default"], resolved), path + (name,)
                checked += 1
    assert checked > 40


@pytest.mark.parametrize("task", ["sft", "pretrain", "dpo", "classification"])
def test_training_keys_are_real_config_fields(task):
    """TRL renames things (max_seq_length -> max_length): a stale key must fail here, not in a user's run."""
    from runner.plan.tasks import TASKS, import_dotted

    spec = TASKS[task]
    fields = {f.name for f in dataclasses.fields(import_dotted(spec.config_class))}
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


def test_docs_are_generated_from_the_schema():
    generated = docs.reference()
    assert (ROOT / "docs" / "recipe.md").read_text() == generated, "run: python -m runner docs > docs/recipe.md"
    for key in ("learning_rate", "name_or_path", "eval_fraction", "lora_alpha", "if_exists"):
        assert f"`{key}`" in generated


def test_path_fields_are_found():
    found = {".".join(parts): kind for parts, kind in schema.path_fields()}
    assert found == {
        "extends": "local",
        "model.name_or_path": "local-or-hub",
        "model.tokenizer": "local-or-hub",
        "model.chat_template": "local",
        "data.train.path": "local",
        "data.eval.path": "local",
        "evaluation.data.path": "local",
        "evaluation.retention.path": "local",
    }


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
