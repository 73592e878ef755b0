"""The plan: cross-field checks with their paths, resolved trainer arguments, parameter counts."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runner.plan import estimate
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from conftest import ROOT, TINY_MODEL, base_recipe, write_json

RECIPES = sorted((ROOT / "recipes").glob("*.json"))


def plan_of(recipe_file, recipe, overrides=()):
    return build_plan(load_recipe(recipe_file(recipe), overrides))


def plan_problems(recipe_file, recipe):
    with pytest.raises(RecipeError) as info:
        plan_of(recipe_file, recipe)
    return {(p.path, p.message, p.hint) for p in info.value.problems}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates_and_plans(path):
    plan = build_plan(load_recipe(path))
    json.dumps(plan)  # serialisable
    assert plan["trainer"]["config"]["output_dir"] == plan["output_dir"]


def test_quickstart_plan_names_task_config_and_arguments():
    plan = build_plan(load_recipe(ROOT / "recipes" / "quickstart.json"))
    assert plan["task"] == "sft" and plan["model"]["task"] == "sft"  # names only: the code is in the task tables
    assert not any(isinstance(v, str) and v.startswith(("trl.", "transformers.", "peft.", "runner."))
                   for v in _leaves(plan)), "no class or function is named by a dotted string"
    config = plan["trainer"]["config"]
    assert config["learning_rate"] == 2e-3 and config["max_length"] == 64
    assert config["completion_only_loss"] is True and "assistant_only_loss" not in config
    assert plan["trainer"]["runner_settings"] == {"assistant_only_loss": False}  # the runner masks chat turns
    assert "bf16" not in config and "use_cpu" not in config  # left to the machine:
    bf16 = plan["fast_defaults"]["settings"]["/training/bf16"]  # one of the fast defaults, with its rule
    assert bf16["recipe"] is None and "avx512_bf16 / amx_bf16 (x86)" in bf16["rule"]
    assert plan["fast_defaults"]["settings"]["/training/use_cpu"]["recipe"] is None
    (train,) = plan["data"]["train"]  # one source: a list of one, with the data section's settings
    assert train["columns"] == {"prompt": "prompt", "completion": "completion"} and train["where"] == "/data/train"
    assert [part["where"] for part in plan["data"]["eval"]] == ["/data/eval"] and plan["data"]["mixture"] is None
    assert plan["parameters"]["known"] and plan["parameters"]["trainable"] == plan["parameters"]["total"]


def test_plan_imports_no_heavy_library():
    code = ("import sys; from runner.__main__ import main; rc = main(['plan', 'recipes/quickstart.json']);"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules];"
            "assert rc == 0 and not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_eval_strategy_without_eval_data(recipe_file, tmp_path):
    recipe = base_recipe(tmp_path, training={"eval_strategy": "steps"})
    assert plan_problems(recipe_file, recipe) >= {
        ("/training/eval_strategy", "'steps' needs evaluation data",
         "add data.eval, or set data.eval_fraction, or set eval_strategy to 'no'")}


def test_format_only_loss_options(recipe_file, tmp_path):
    recipe = base_recipe(tmp_path, training={"completion_only_loss": True, "assistant_only_loss": True})
    found = {(p, m) for p, m, _ in plan_problems(recipe_file, recipe)}
    assert ("/training/completion_only_loss", "only applies to data.format 'prompt_completion'") in found
    assert ("/training/assistant_only_loss", "only applies to data.format 'messages'") in found


def test_missing_data_file_and_foreign_column(recipe_file, tmp_path):
    recipe = base_recipe(tmp_path, data={"train": {"path": "absent.jsonl"}, "columns": {"prompt": "q"}})
    found = plan_problems(recipe_file, recipe)
    assert ("/data/train/path", f"file not found: {tmp_path / 'absent.jsonl'}",
            "a relative path is resolved against the recipe's directory") in found
    assert ("/data/columns/prompt", "format 'text' has no field 'prompt'", "its fields are: text") in found


def test_config_override_must_exist_in_the_config(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    recipe = base_recipe(tmp_path, model={"config_overrides": {"num_hiden_layers": 1}})
    assert plan_problems(recipe_file, recipe) == {
        ("/model/config_overrides/num_hiden_layers", "not a key of the model's config.json",
         "did you mean 'num_hidden_layers'?")}


def test_lora_target_module_must_exist(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    recipe = base_recipe(tmp_path, peft={"method": "lora", "target_modules": ["q_proj", "qproj", "query"]})
    found = plan_problems(recipe_file, recipe)
    assert ("/peft/target_modules/1", "'qproj' is not a linear module of this llama model",
            "did you mean 'q_proj'?") in found
    assert len(found) == 2


def test_missing_local_model_directory(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    recipe = base_recipe(tmp_path, model={"name_or_path": "./no-such-model"})
    (where, message, _), = plan_problems(recipe_file, recipe)
    assert where == "/model/name_or_path" and message.startswith("no such directory")


def test_lora_plan_has_peft_config_and_counts(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    plan = plan_of(recipe_file, base_recipe(tmp_path, peft={"method": "lora", "r": 4}))
    assert plan["peft"]["method"] == "lora" and set(plan["peft"]) == {"method", "kwargs"}
    assert plan["peft"]["kwargs"]["task_type"] == "CAUSAL_LM" and plan["peft"]["kwargs"]["r"] == 4
    assert (plan["parameters"]["trainable"], plan["parameters"]["total"]) == (30_720, 704_000)  # r 4 on the tiny Llama


def test_default_output_dir_is_runs_slash_name(recipe_file, tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    recipe = base_recipe(tmp_path)
    del recipe["output"]["dir"]  # the schema's default: runs/{name}
    assert plan_of(recipe_file, recipe)["output_dir"] == str(tmp_path / "runs" / "t")
    recipe["output"]["dir"] = None  # null, as earlier recipes spelled the default
    assert plan_of(recipe_file, recipe)["output_dir"] == str(tmp_path / "runs" / "t")
    recipe["output"]["dir"] = "elsewhere/{name}-v2"
    assert plan_of(recipe_file, recipe)["output_dir"] == str(tmp_path / "elsewhere" / "t-v2")


SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 100}


@pytest.mark.parametrize("raw", [
    {**SHAPE, "model_type": "qwen3", "num_key_value_heads": 2},  # head_dim defaults to 128 in Qwen3Config
    {**SHAPE, "model_type": "mistral"},  # num_key_value_heads defaults to 8 in MistralConfig
    {k: v for k, v in SHAPE.items() if k != "intermediate_size"} | {"model_type": "llama"},
    {**SHAPE, "model_type": "llama", "hidden_size": "big"},
    {**SHAPE, "model_type": "llama", "num_attention_heads": 0},
])
def test_estimate_is_unknown_rather_than_wrong(raw):
    assert estimate.total_parameters(raw) is None


def test_unknown_architecture_says_why(recipe_file, tmp_path):
    model_dir = tmp_path / "gpt2ish"
    write_json(model_dir / "config.json", {"model_type": "gpt2", "n_layer": 2})
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    plan = plan_of(recipe_file, base_recipe(tmp_path, model={"name_or_path": str(model_dir)}))
    assert plan["parameters"] == {
        "known": False,
        "why": "architecture 'gpt2' is not in the estimator; run.json records the counts after loading"}


def test_hub_model_not_in_cache_plans_without_counts(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    plan = plan_of(recipe_file, base_recipe(tmp_path, model={"name_or_path": "some-org/some-model",
                                                             "init": "pretrained"}))
    assert plan["parameters"]["known"] is False
    assert "not in the local cache" in plan["parameters"]["why"]
    assert plan["model"]["name_or_path"] == "some-org/some-model"


def test_tiny_model_dir_is_local(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    plan = plan_of(recipe_file, base_recipe(tmp_path))
    assert plan["model"]["name_or_path"] == str(TINY_MODEL)


def test_hub_model_in_the_local_cache_gets_counts(recipe_file, tmp_path, monkeypatch):
    """The plan reads a cached Hub config by the cache's layout (refs/<rev> -> snapshots/<commit>)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    write_json(snapshot / "config.json", json.loads((TINY_MODEL / "config.json").read_text()))
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    plan = plan_of(recipe_file, base_recipe(tmp_path, model={"name_or_path": "org/tiny", "init": "pretrained"}))
    assert plan["parameters"]["known"] and plan["parameters"]["from"] == str(snapshot / "config.json")


def test_missing_tokenizer_directory(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    recipe = base_recipe(tmp_path, model={"tokenizer": "./no-such-tokenizer"})
    (where, message, _), = plan_problems(recipe_file, recipe)
    assert where == "/model/tokenizer" and message == f"no such directory: {tmp_path / 'no-such-tokenizer'}"


def test_unreadable_model_config(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama",}')
    (where, message, _), = plan_problems(recipe_file, base_recipe(tmp_path, model={"name_or_path": "./m"}))
    assert where == "/model/name_or_path" and message == f"{tmp_path / 'm'} has no readable config.json"


def test_one_column_for_two_fields(recipe_file, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"q": "a"}\n')
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "columns": {"prompt": "q", "completion": "q"}})
    assert plan_problems(recipe_file, recipe) == {
        ("/data/columns", "column 'q' is mapped to more than one field", "each field needs its own column")}


@pytest.mark.parametrize("fmt, completion_only, assistant_only", [
    ("text", False, False), ("prompt_completion", True, False), ("messages", False, True)])
def test_loss_masking_defaults_follow_the_format(recipe_file, tmp_path, fmt, completion_only, assistant_only):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    trainer = plan_of(recipe_file, base_recipe(tmp_path, data={"format": fmt}))["trainer"]
    assert trainer["config"]["completion_only_loss"] is completion_only
    assert trainer["runner_settings"]["assistant_only_loss"] is assistant_only


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "recipes").glob("*.json")), ids=lambda p: p.name)
def test_benchmark_recipes_validate_and_plan(path):
    plan = build_plan(load_recipe(path))
    assert plan["trainer"]["config"]["max_steps"] > 0


def _leaves(value):
    """Every scalar in a nested plan, except the recipe the user wrote (its descriptions are free text)."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() if key != "recipe" for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_a_run_directory_as_the_start_model_must_hold_a_whole_model(tmp_path, recipe_file):
    """Chaining runs: a full fine-tuning run's directory is a model directory; an adapter run must be readable
    (tests/quick/test_adapter_run_plans.py)."""
    from conftest import write_jsonl

    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    adapter_run, unfinished = tmp_path / "lora-run", tmp_path / "stopped-run"
    for run in (adapter_run, unfinished):
        run.mkdir()
        (run / "plan.json").write_text("{}")
    (adapter_run / "adapter_config.json").write_text("{}")
    for run, message, hint in (
        (adapter_run, f"{adapter_run} saved an adapter, but its plan.json or adapter_config.json cannot be read",
         f"merge it onto its base (python -m runner merge {adapter_run} --out DIR) and name DIR"),
        (unfinished, f"the run in {unfinished} saved no model (it did not finish)",
         "run it to the end, or name one of its checkpoints"),
    ):
        recipe = base_recipe(tmp_path, model={"name_or_path": str(run)})
        with pytest.raises(RecipeError) as info:
            build_plan(load_recipe(recipe_file(recipe)))
        assert [(p.path, p.message, p.hint) for p in info.value.problems] == [("/model/name_or_path", message, hint)]
