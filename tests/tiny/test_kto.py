"""KTO on unpaired examples (TRL's KTOTrainer): each completion marked desirable or not, a frozen reference copy of
the start model; the loss falls, the desirable completions' implicit reward rises above the undesirable ones', and a
label that is not a boolean is named by row before the model loads."""
from __future__ import annotations

import json
import random

import pytest

from conftest import ROOT, base_recipe, write_json, write_jsonl
from runner.commands.run import run
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe


def unpaired_rows(count: int, seed: int) -> list[dict]:
    """The quickstart's reversals: desirable as asked (lowercase), undesirable in capitals, about half each."""
    rng = random.Random(seed)
    lines = (ROOT / "recipes" / "assets" / "reverse" / "train.jsonl").read_text().splitlines()[:count]
    rows = []
    for line in lines:
        row, good = json.loads(line), rng.random() < 0.5
        rows.append({"prompt": row["prompt"], "completion": row["completion"] if good else row["completion"].upper(),
                     "label": good})
    return rows


def kto_plan(tmp_path, train_rows, **training):
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "eval.jsonl", unpaired_rows(16, seed=1))
    recipe = base_recipe(tmp_path, task="kto", data={"train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
                         evaluation={"baseline": True})
    recipe["training"] = {"max_steps": 24, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                          "max_length": 32, "learning_rate": 1e-3, "logging_steps": 4, "save_strategy": "no",
                          **training}
    return build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))


def test_kto_trains_towards_the_desirable_completions(tmp_path):
    plan = kto_plan(tmp_path, unpaired_rows(64, seed=0))
    assert plan["trainer"]["reference_model"] == "copy" and plan["evaluation"]["metrics"] == ["loss", "rewards"]
    manifest = run(plan, argv=["test"])
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert losses[-1] < losses[0] - 0.05, losses
    after = manifest["metrics"]["after"]
    assert after["loss"] < manifest["metrics"]["before"]["loss"]
    assert after["rewards/chosen"] > after["rewards/rejected"], after


def test_a_label_that_is_not_a_boolean_is_named_by_row(tmp_path):
    rows = unpaired_rows(8, seed=0)
    rows[2]["label"], rows[5]["label"] = "yes", 1
    with pytest.raises(RecipeError) as info:
        run(kto_plan(tmp_path, rows), argv=["test"])
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/data/train", f"2 rows have a label that is not true or false (desirable or not): rows 3, 6 (column label) in "
                        f"{tmp_path / 'train.jsonl'}")]
