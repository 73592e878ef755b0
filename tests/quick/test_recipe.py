"""Recipe loading: defaults, extends, --set, and the exact error a user gets for each mistake."""
from __future__ import annotations

import pytest

from runner.errors import RecipeError
from runner.recipe.load import load_recipe
from conftest import base_recipe, write_json


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return {(p.path, p.message, p.hint) for p in info.value.problems}


def test_minimal_recipe_gets_every_default(tmp_path, recipe_file):
    path = recipe_file({"name": "m", "model": {"name_or_path": "org/model"},
                        "data": {"train": {"path": "d.jsonl"}}})
    recipe = load_recipe(path)
    assert recipe["task"] == "sft"
    assert recipe["training"]["learning_rate"] == 2e-5
    assert recipe["peft"] == {"method": "none"}
    assert recipe["data"]["train"]["split"] == "train"
    assert recipe["data"]["train"]["path"] == str(tmp_path / "d.jsonl")  # relative to the recipe file
    assert recipe["model"]["name_or_path"] == "org/model"  # not a local path: a Hub id


def test_recipe_is_read_only(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file(base_recipe(tmp_path)))
    with pytest.raises(TypeError):
        recipe["training"]["learning_rate"] = 1.0


def test_lora_defaults_fill_only_for_lora(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file(base_recipe(tmp_path, peft={"method": "lora", "r": 4})))
    assert dict(recipe["peft"]) == {"method": "lora", "r": 4, "lora_alpha": 32, "lora_dropout": 0.05,
                                    "target_modules": "all-linear", "bias": "none", "use_dora": False,
                                    "use_rslora": False, "init_lora_weights": True, "modules_to_save": None}


def test_misspelt_key_names_path_and_suggests(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, training={"learnig_rate": 1e-4}))
    assert problems_of(path) == {("/training/learnig_rate", "unknown key", "did you mean 'learning_rate'?")}


def test_all_problems_are_reported_at_once(recipe_file, tmp_path):
    recipe = base_recipe(tmp_path, training={"learning_rate": "abc", "max_steps": 0},
                         data={"format": "prompt-completion", "train": {"path": "t.jsonl"}})
    recipe["modle"] = {}
    del recipe["model"]
    found = problems_of(recipe_file(recipe))
    assert found == {
        ("/training/learning_rate", "'abc' is not a number", None),
        ("/training/max_steps", "0: must be -1 (train for num_train_epochs) or a positive number of steps", None),
        ("/data/format", "'prompt-completion' is not one of [null, 'text', 'prompt_completion', 'messages', "
                         "'alpaca', 'sharegpt', 'preference', 'sharegpt_preference', 'unpaired_preference', 'prompt_only', 'labelled']",
         "did you mean 'prompt_completion'?"),
        ("/modle", "unknown key", "did you mean 'model'?"),
        ("/model", "missing (required)", None),
    }


def test_method_specific_key_under_another_method(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, peft={"method": "none", "r": 8}))
    assert problems_of(path) == {("/peft/r", "not allowed here", "'r' belongs to method ['lora'], not 'none'")}


def test_unknown_key_inside_optional_source(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, data={"eval": {"path": "e.jsonl", "lmit": 5}}))
    assert problems_of(path) == {("/data/eval/lmit", "unknown key", "did you mean 'limit'?")}


def test_source_needs_exactly_one_of_path_or_hub(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, data={"train": {"path": "a.jsonl", "hub": "x/y"}}))
    (where, message, _), = problems_of(path)
    assert where == "/data/train" and "exactly one of 'path'" in message


def test_unsupported_data_file_type(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, data={"train": {"path": "a.txt"}}))
    (where, message, _), = problems_of(path)
    assert where == "/data/train/path" and "a.txt': must end in .json, .jsonl, .csv, .tsv or .parquet" in message


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "model": {"name_or_path": "m"}\n  "data": {}\n}\n')
    assert problems_of(path) == {("", "invalid JSON at line 4, column 3: Expecting ',' delimiter", None)}


def test_missing_recipe_file(tmp_path):
    (where, message, _), = problems_of(tmp_path / "nope.json")
    assert message.startswith("recipe file not found")


def test_extends_merges_deeply_child_wins_paths_relative_to_base(tmp_path):
    write_json(tmp_path / "base" / "base.json", {
        "name": "base", "model": {"name_or_path": "org/m", "dtype": "bfloat16"},
        "data": {"train": {"path": "data/train.jsonl"}}, "training": {"learning_rate": 1e-4, "seed": 7},
    })
    child = write_json(tmp_path / "child.json", {
        "extends": "base/base.json", "name": "child", "training": {"learning_rate": 5e-5},
    })
    recipe = load_recipe(child)
    assert recipe["name"] == "child"
    assert recipe["training"]["learning_rate"] == 5e-5 and recipe["training"]["seed"] == 7
    assert recipe["model"]["dtype"] == "bfloat16"
    assert recipe["data"]["train"]["path"] == str(tmp_path / "base" / "data" / "train.jsonl")
    assert "extends" not in recipe.to_dict()


def test_extends_missing_file(tmp_path):
    child = write_json(tmp_path / "c.json", {"extends": "nowhere.json", "name": "c"})
    (where, message, hint), = problems_of(child)
    assert where == "/extends" and message == f"file not found: {tmp_path / 'nowhere.json'}"


def test_extends_cycle(tmp_path):
    write_json(tmp_path / "a.json", {"extends": "b.json", "name": "a"})
    write_json(tmp_path / "b.json", {"extends": "a.json", "name": "b"})
    (where, message, _), = problems_of(tmp_path / "a.json")
    assert where == "/extends" and "cycle" in message


def test_set_overrides_are_typed_by_the_schema(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path))
    recipe = load_recipe(path, [
        "training.learning_rate=1e-4", "training.max_length=null", "model.revision=123",
        "peft.method=lora", "peft.target_modules=[\"q_proj\"]", "training.packing=true",
    ])
    assert recipe["training"]["learning_rate"] == 1e-4
    assert recipe["training"]["max_length"] is None
    assert recipe["model"]["revision"] == "123"  # string-only key: kept as text, not the number 123
    assert recipe["peft"]["target_modules"] == ("q_proj",)
    assert recipe["training"]["packing"] is True


def test_set_paths_are_relative_to_the_working_directory(recipe_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    recipe = load_recipe(recipe_file(base_recipe(tmp_path)), ["data.train.path=elsewhere.jsonl"])
    assert recipe["data"]["train"]["path"] == str((tmp_path / ".." / "elsewhere.jsonl").resolve())


def test_set_unknown_key_suggests(recipe_file, tmp_path):
    found = problems_of(recipe_file(base_recipe(tmp_path)), ["training.learnig_rate=1e-4"])
    assert found == {("/training/learnig_rate", "unknown key (in --set 'training.learnig_rate=1e-4')",
                      "did you mean 'learning_rate'?")}


def test_set_without_equals(recipe_file, tmp_path):
    (where, message, hint), = problems_of(recipe_file(base_recipe(tmp_path)), ["training.learning_rate"])
    assert "expected KEY=VALUE" in message and "--set training.learning_rate=1e-4" in hint


def test_set_wrong_type_is_reported_with_path(recipe_file, tmp_path):
    found = problems_of(recipe_file(base_recipe(tmp_path)), ["training.per_device_train_batch_size=lots"])
    assert found == {("/training/per_device_train_batch_size", "'lots' is not an integer", None)}


def test_child_can_switch_a_section_to_another_kind(tmp_path):
    write_json(tmp_path / "base.json", {
        "name": "b", "model": {"name_or_path": "org/m"}, "data": {"train": {"path": "t.jsonl", "limit": 5}},
        "peft": {"method": "lora", "r": 8}})
    child = write_json(tmp_path / "child.json", {
        "extends": "base.json", "peft": {"method": "none"}, "data": {"train": {"hub": "org/data"}}})
    recipe = load_recipe(child)
    assert recipe["peft"] == {"method": "none"}
    assert recipe["data"]["train"]["hub"] == "org/data" and "path" not in recipe["data"]["train"]
    assert recipe["data"]["train"]["limit"] is None


def test_set_can_switch_peft_method(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, peft={"method": "lora", "r": 8}))
    assert load_recipe(path, ["peft.method=none"])["peft"] == {"method": "none"}


def test_set_cannot_change_extends(recipe_file, tmp_path):
    found = problems_of(recipe_file(base_recipe(tmp_path)), ["extends=other.json"])
    assert found == {("/extends", "--set 'extends=other.json': extends cannot be overridden",
                      "write a recipe file that extends the one you want")}


def test_set_problems_and_recipe_problems_come_together(recipe_file, tmp_path):
    path = recipe_file(base_recipe(tmp_path, training={"learnig_rate": 1}))
    found = {p for p, _, _ in problems_of(path, ["trainig.seed=1"])}
    assert found == {"/trainig", "/training/learnig_rate"}


def test_json_that_python_accepts_but_a_recipe_must_not(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"name": "x", "name": "y"}')
    assert problems_of(path) == {("", "the key 'name' appears twice in one object; keep one", None)}
    path.write_text('{"name": "x", "model": {"name_or_path": "m"}, "data": {"train": {"path": "t.jsonl"}}, '
                    '"training": {"learning_rate": NaN, "max_grad_norm": 1e999}}')
    assert problems_of(path) == {("/training/learning_rate", "nan is not a finite number", None),
                                 ("/training/max_grad_norm", "inf is not a finite number", None)}


@pytest.mark.parametrize("override, path, message", [
    ('training.report_to="wandb"', "/training/report_to",
     "'wandb': must be \"none\" or a list of trackers from wandb, tensorboard, mlflow, comet_ml, trackio, clearml, "
     "swanlab, e.g. [\"wandb\"]"),
    ("peft.target_modules=3", "/peft/target_modules",
     "3: must be \"all-linear\", a list of module names (e.g. [\"q_proj\", \"v_proj\"]) or a regular expression "
     "string"),
    ("training.save_steps=2.5", "/training/save_steps",
     "2.5: must be a whole number of steps (1 or more) or a fraction in (0, 1) of the total steps"),
    ("training.warmup_steps=2.5", "/training/warmup_steps",
     "2.5: must be a whole number of steps (0 or more) or a fraction in [0, 1) of the total steps"),
    ("training.save_strategy=best", "/training/save_strategy", "'best' is not one of ['no', 'steps', 'epoch']"),
])
def test_values_with_several_allowed_shapes_say_which(recipe_file, tmp_path, override, path, message):
    recipe = base_recipe(tmp_path, peft={"method": "lora"})
    assert {(p, m) for p, m, _ in problems_of(recipe_file(recipe), [override])} == {(path, message)}


def test_a_typo_in_a_local_model_path_stays_a_local_path(tmp_path, recipe_file):
    (tmp_path / "assets").mkdir()
    recipe = load_recipe(recipe_file(base_recipe(tmp_path, model={"name_or_path": "assets/tiny-lama"})))
    assert recipe["model"]["name_or_path"] == str(tmp_path / "assets" / "tiny-lama")  # not taken for a Hub id
