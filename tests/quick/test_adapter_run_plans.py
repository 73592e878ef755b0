"""An earlier adapter run as the start model (model.adapter: merge | train), as `plan` sees it: the run is read
from its plan.json and adapter_config.json, every conflicting setting is refused at its key, and the plan says
which base loads, what trains and what the reference model is. tests/tiny/test_adapter_runs.py trains them."""
from __future__ import annotations

import shutil

import pytest

from conftest import TINY_MODEL, base_recipe, write_json, write_jsonl
from runner.errors import RecipeError
from runner.plan.build import build_plan, to_json
from runner.recipe.load import load_recipe

LORA = {"method": "lora", "r": 8}


def adapter_run(tmp_path, recipe_file, peft: dict = LORA, task: str = "sft", init: str = "random"):
    """A finished adapter run's directory as the runner leaves it: its plan.json and the base peft recorded (the
    random start weights kept in the run directory, or the model it started from)."""
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b", "chosen": "b", "rejected": "c"}])
    run_dir = tmp_path / f"{task}-{peft['method']}-run"
    fmt = {"sft": "prompt_completion", "reward": "preference"}[task]
    recipe = base_recipe(tmp_path, task=task, model={"name_or_path": str(TINY_MODEL), "init": init},
                         data={"format": fmt}, peft=peft, output={"dir": str(run_dir)})
    plan = build_plan(load_recipe(recipe_file(recipe, f"{run_dir.name}.json")))
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(to_json(plan))
    base = run_dir / "base_model" if init == "random" else TINY_MODEL
    if init == "random":  # the start weights' folder (its config; the weights are not read by plan)
        (base).mkdir()
        shutil.copy(TINY_MODEL / "config.json", base / "config.json")
    write_json(run_dir / "adapter_config.json", {"base_model_name_or_path": str(base), "peft_type": "LORA"})
    return run_dir, plan


def chained(tmp_path, recipe_file, run_dir, adapter, task: str = "sft", **sections):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b", "chosen": "b", "rejected": "c"}])
    fmt = {"sft": "prompt_completion", "grpo": "prompt_only", "reward": "preference", "dpo": "preference"}[task]
    model = sections.pop("model", {"name_or_path": str(run_dir), "adapter": adapter})
    training = sections.pop("training", None)
    recipe = base_recipe(tmp_path, task=task, data={"format": fmt}, output={"dir": str(tmp_path / "next")}, **sections)
    recipe["model"] = model  # whole: none of base_recipe's
    recipe["training"] = training or recipe["training"]
    return load_recipe(recipe_file(recipe, "next.json"))


def problems_of(recipe) -> list[tuple[str, str, str | None]]:
    with pytest.raises(RecipeError) as info:
        build_plan(recipe)
    return [(p.path, p.message, p.hint) for p in info.value.problems]


def test_an_adapter_run_must_say_how_it_becomes_the_start_model(tmp_path, recipe_file):
    run_dir, _ = adapter_run(tmp_path, recipe_file)
    assert problems_of(chained(tmp_path, recipe_file, run_dir, None)) == [
        ("/model/adapter", f"{run_dir} is a sft run that saved a lora adapter: say how it becomes the start model",
         'set model.adapter to "merge" (merged into its base as it loads; peft says what trains) or "train" '
         "(the run's adapter trains on)")]


def test_adapter_applies_only_to_an_adapter_run(tmp_path, recipe_file):
    recipe = chained(tmp_path, recipe_file, TINY_MODEL, "merge")
    assert [(path, message) for path, message, _ in problems_of(recipe)] == [
        ("/model/adapter", f"{TINY_MODEL} is not a finished run that saved an adapter")]


def test_the_base_settings_are_the_runs_own(tmp_path, recipe_file):
    run_dir, _ = adapter_run(tmp_path, recipe_file)
    recipe = chained(tmp_path, recipe_file, run_dir, "merge",
                     model={"name_or_path": str(run_dir), "adapter": "merge", "revision": "v2", "init": "random",
                            "config_overrides": {"num_hidden_layers": 1}})
    where = f"{run_dir} is a sft run that saved a lora adapter"
    assert problems_of(recipe) == [
        (f"/model/{key}", f"the base is the run's ({where}): its own {key} applies", f"remove model.{key}")
        for key in ("revision", "config_overrides", "init")]


def test_merging_plans_the_runs_base_then_the_recipes_own_tuning(tmp_path, recipe_file):
    run_dir, sft = adapter_run(tmp_path, recipe_file)
    plan = build_plan(chained(tmp_path, recipe_file, run_dir, "merge", peft={"method": "lora", "r": 4}))
    run = plan["model"]["adapter_run"]
    assert (run["run_dir"], run["mode"], run["method"], run["run_task"]) == (str(run_dir), "merge", "lora", "sft")
    # the random start weights the run kept, as peft recorded them; loaded plain, with none of the recipe's overrides
    assert (run["base"]["name_or_path"], run["base"]["init"], run["base"]["adapter_run"]) == \
        (str(run_dir / "base_model"), "pretrained", None)
    assert plan["peft"]["kwargs"]["r"] == 4 and "continues" not in plan["peft"]  # a new adapter on the merged model
    # the estimates read the base's config: the same model as the run's
    frozen = [p["parameters"]["total"] - p["parameters"]["trainable"] for p in (plan, sft)]
    assert frozen[0] == frozen[1] > 0
    assert plan["model"]["tokenizer"] == str(run_dir)  # the tokenizer the run saved


def test_a_model_run_merged_loads_its_start_model_with_the_runs_settings(tmp_path, recipe_file):
    run_dir, sft = adapter_run(tmp_path, recipe_file, init="pretrained")
    plan = build_plan(chained(tmp_path, recipe_file, run_dir, "merge"))
    base = plan["model"]["adapter_run"]["base"]
    assert base["name_or_path"] == str(TINY_MODEL) and base["task"] == "sft"
    assert {k: base[k] for k in ("gguf_file", "revision", "config_overrides")} == \
        {k: sft["model"][k] for k in ("gguf_file", "revision", "config_overrides")}


def test_training_on_needs_the_runs_adapter_settings(tmp_path, recipe_file):
    run_dir, _ = adapter_run(tmp_path, recipe_file)
    recipe = chained(tmp_path, recipe_file, run_dir, "train", peft={"method": "lora", "r": 16, "lora_alpha": 8})
    fix = "the run's adapter trains on as it was made; to change it, merge it (model.adapter: merge) and train a new one"
    assert problems_of(recipe) == [
        ("/peft/lora_alpha", "is 8 here but the run's adapter has 32", f"set peft.lora_alpha to 32: {fix}"),
        ("/peft/r", "is 16 here but the run's adapter has 8", f"set peft.r to 8: {fix}")]
    plan = build_plan(chained(tmp_path, recipe_file, run_dir, "train", peft=LORA))
    assert plan["peft"]["continues"] == str(run_dir)


def test_what_an_adapter_cannot_become_is_refused(tmp_path, recipe_file):
    prompt_run, _ = adapter_run(tmp_path, recipe_file, peft={"method": "prompt_tuning", "num_virtual_tokens": 4})
    [(path, message, hint)] = problems_of(chained(tmp_path, recipe_file, prompt_run, "merge"))
    assert (path, hint) == ("/model/adapter", 'set model.adapter to "train"') and "no weights to merge" in message
    sft_run, _ = adapter_run(tmp_path, recipe_file)
    [(path, message, _)] = problems_of(chained(tmp_path, recipe_file, sft_run, "train", task="reward", peft=LORA))
    assert path == "/model/adapter" and message.endswith("it cannot train on as a reward model")
    reward_run, _ = adapter_run(tmp_path, recipe_file, task="reward", init="pretrained")
    for task in ("sft", "reward"):  # its score head was trained for that run's scores
        [(path, message, hint)] = problems_of(chained(tmp_path, recipe_file, reward_run, "merge", task=task))
        assert (path, hint) == ("/model/adapter", f"merge it (python -m runner merge {reward_run} --out DIR) and "
                                                  "name DIR")
        assert message.endswith("only a causal language model's adapter can start another run")
    # a causal LM's adapter sits on the transformer blocks a reward model shares: merged, it starts one
    assert build_plan(chained(tmp_path, recipe_file, sft_run, "merge", task="reward"))["model"]["adapter_run"]


@pytest.mark.parametrize("adapter, peft, reference", [
    ("merge", {"method": "none"}, None),  # refused: TRL would reload the base, not the merged model
    ("merge", {"method": "lora"}, "adapter-disabled"),  # the merged model: the new adapter off
    ("train", LORA, "adapter-copy"),  # TRL's frozen "ref" copy of the run's adapter
])
def test_the_kl_reference_of_online_rl_is_the_runs_model(tmp_path, recipe_file, adapter, peft, reference):
    run_dir, _ = adapter_run(tmp_path, recipe_file)
    recipe = chained(tmp_path, recipe_file, run_dir, adapter, task="grpo", peft=peft,
                     rewards=[{"type": "length", "max_chars": 10}],
                     training={"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "beta": 0.04})
    if reference is None:
        [(path, message, _)] = problems_of(recipe)
        assert (path, message) == ("/training/beta", "beta > 0 keeps a reference model, which TRL reloads from "
                                   "model.name_or_path: for an adapter run merged as it loads that is not the start model")
    else:
        assert build_plan(recipe)["trainer"]["reference_model"] == reference


def test_a_chain_of_adapter_runs_finds_the_first_runs_base(tmp_path, recipe_file):
    """A (a pretrained model with config overrides, LoRA) -> B (trains A's adapter on) -> C (merges B's): C's base
    is A's, overrides included, loaded for C's task; B's own adapter_config names A's base, not B's start."""
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b", "chosen": "b", "rejected": "c"}])
    first = base_recipe(tmp_path, model={"name_or_path": str(TINY_MODEL), "init": "pretrained",
                                         "config_overrides": {"rms_norm_eps": 1e-3}},
                        data={"format": "prompt_completion"}, peft=LORA, output={"dir": str(tmp_path / "a")})
    runs = {}
    for name, start in (("a", None), ("b", "train")):
        doc = first if start is None else chained(tmp_path, recipe_file, runs["a"], start, peft=LORA)
        plan = build_plan(doc if start else load_recipe(recipe_file(first, "a.json")))
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "plan.json").write_text(to_json(plan))
        write_json(run_dir / "adapter_config.json", {"base_model_name_or_path": str(TINY_MODEL)})
        runs[name] = run_dir
    plan = build_plan(chained(tmp_path, recipe_file, runs["b"], "merge", task="reward"))
    base = plan["model"]["adapter_run"]["base"]
    assert (base["name_or_path"], base["config_overrides"], base["task"]) == \
        (str(TINY_MODEL), {"rms_norm_eps": 1e-3}, "reward")


def test_an_adapter_run_whose_base_is_gone_says_so(tmp_path, recipe_file):
    run_dir, _ = adapter_run(tmp_path, recipe_file)
    shutil.rmtree(run_dir / "base_model")  # the random start weights the run kept, gone
    [(path, message, _)] = problems_of(chained(tmp_path, recipe_file, run_dir, "merge"))
    assert (path, message) == ("/model/name_or_path", f"{run_dir} is an adapter run whose base has no readable "
                               f"config (its adapter_config.json names {run_dir / 'base_model'})")
