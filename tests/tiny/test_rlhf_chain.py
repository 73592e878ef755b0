"""The RLHF chain on a CPU, end to end, as shipped in recipes/rlhf/: supervised fine-tuning on the reversal task ->
a reward model started from the SFT weights, on right-vs-near-miss pairs -> GRPO from the SFT run with that reward
model and exact match. The recipes are copied byte for byte into a layout like the repository's and run in order
from its root, each link reading the run directory the step before wrote."""
from __future__ import annotations

import pytest

from runner.commands.run import run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from rlhf_layout import laid_out


@pytest.mark.slow
def test_the_shipped_chain_runs_and_grpo_raises_exact_match_over_the_sft_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipes = laid_out(tmp_path)
    sft, reward, grpo = (run(build_plan(load_recipe(recipes / f"{name}.json")), argv=["test"])
                         for name in ("sft", "reward", "grpo"))
    print({name: manifest["metrics"] for name, manifest in (("sft", sft), ("reward", reward), ("grpo", grpo))})
    assert [m["status"] for m in (sft, reward, grpo)] == ["finished"] * 3

    # The SFT start gets some reversals right, far from all: room for RL.
    assert 0.1 < sft["metrics"]["after"]["exact_match"] < 0.6

    # The reward model tells the right reversal from a near miss better than chance and than its start.
    before, after = reward["metrics"]["before"], reward["metrics"]["after"]
    assert after["pairwise_accuracy"] >= 0.65 and after["pairwise_accuracy"] > before["pairwise_accuracy"] + 0.1

    # GRPO raises the mean exact-match reward of sampled completions on the 200 held-out prompts (8 each).
    before, after = grpo["metrics"]["before"], grpo["metrics"]["after"]
    assert after["rewards/exact_match/mean"] > before["rewards/exact_match/mean"] + 0.05
    assert after["exact_match"] > before["exact_match"]  # and greedy exact match with it
