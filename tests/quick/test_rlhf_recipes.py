"""The RLHF chain's shipped recipes (recipes/rlhf/): each validates, and each link names the run directory the step
before it writes. The runs do not exist here: stand-ins (a model directory, a reward run's plan) take their places,
in a copy of the recipes laid out as in the repository. tests/tiny/test_rlhf_chain.py runs the CPU chain for real."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT, TINY_MODEL, write_json
from rlhf_layout import laid_out
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

CHAINS = {"cpu": ("sft", "reward", "grpo"), "qwen": ("qwen_sft", "qwen_reward", "qwen_grpo")}


def stand_in_run(directory, task: str):
    """A finished run's directory as the next link reads it: a model (config and tokenizer) and the run's plan."""
    shutil.copytree(TINY_MODEL, directory)
    write_json(directory / "plan.json", {"task": task})


def test_the_chain_recipes_are_all_shipped():
    assert sorted(p.stem for p in (ROOT / "recipes" / "rlhf").glob("*.json")) == sorted(sum(CHAINS.values(), ()))


@pytest.mark.parametrize("chain", CHAINS)
def test_each_link_plans_on_the_run_directory_the_step_before_writes(tmp_path, monkeypatch, chain):
    monkeypatch.chdir(tmp_path)  # run from the root of the layout, as the recipes' descriptions say
    recipes = laid_out(tmp_path)
    sft_name, reward_name, grpo_name = CHAINS[chain]
    sft = build_plan(load_recipe(recipes / f"{sft_name}.json"))
    with pytest.raises(RecipeError) as info:  # before the SFT run: the reward step names what is missing
        build_plan(load_recipe(recipes / f"{reward_name}.json"))
    assert [(p.path, p.message) for p in info.value.problems] == \
        [("/model/name_or_path", f"no such directory: {sft['output_dir']}")]

    stand_in_run(tmp_path / "runs" / f"rlhf{'-qwen' if chain == 'qwen' else ''}-sft", "sft")
    reward = build_plan(load_recipe(recipes / f"{reward_name}.json"))
    assert reward["task"] == "reward" and reward["model"]["name_or_path"] == sft["output_dir"]

    reward_run = tmp_path / "runs" / f"rlhf{'-qwen' if chain == 'qwen' else ''}-reward"
    if chain == "qwen":  # a LoRA reward run: an adapter on the SFT run's weights, no config.json of its own
        reward_run.mkdir()
        write_json(reward_run / "adapter_config.json", {"base_model_name_or_path": sft["output_dir"]})
        write_json(reward_run / "plan.json", {"task": "reward"})
    else:
        stand_in_run(reward_run, "reward")
    grpo = build_plan(load_recipe(recipes / f"{grpo_name}.json"))
    assert grpo["task"] == "grpo" and grpo["model"]["name_or_path"] == sft["output_dir"]
    (model_reward,) = [r for r in grpo["rewards"] if r["type"] == "model"]
    assert model_reward["path"] == reward["output_dir"]
    # the reward model's weights are in the memory estimate, a LoRA run's read from its base's config
    assert grpo["memory"]["estimate_inputs"]["settings"]["reward_model_bytes"] > 0
    json.dumps(grpo)
