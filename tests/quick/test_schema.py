"""The schema itself: well-formed, documented, closed, defaults valid, names real in the libraries."""
from __future__ import annotations


from jsonschema import Draft202012Validator

from runner.recipe import docs
from runner.recipe import schema
from schema_tree import walk
from conftest import ROOT

OPEN_MAPS = {"config_overrides"}  # free-form maps of Hugging Face config keys, checked against the config


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
        "data.train.*.path": "local",  # each source of a mixture
        "data.eval.*.path": "local",
        "rewards.*.path": "local-or-hub",  # a reward run or model
        "rewards.*.file": "local",  # a code reward
        "training.teacher_model_name_or_path": "local-or-hub",  # task distill
        "evaluation.data.path": "local",
        "evaluation.retention.path": "local",
    }
