"""DPO of a real instruct model (SmolLM2-135M-Instruct, from its GGUF file) on LLaMA-Factory's ShareGPT preference
pairs as they are (recipes/dpo_sharegpt.json's data, no converter): before training the policy is its own reference
(LoRA starts at zero: every margin exactly 0); after a few steps it prefers the chosen answers it trained on."""
from __future__ import annotations

import json

import pytest

from conftest import base_recipe
from real_models import SHARED_DATA
from runner.commands.run import run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

pytestmark = pytest.mark.real


def short_pairs(count: int, max_chars: int = 400) -> list[dict]:
    rows = json.loads((SHARED_DATA / "pref_dpo" / "dpo_en_demo.json").read_text())
    size = lambda r: sum(len(t["value"]) for t in r["conversations"]) + len(r["chosen"]["value"])  # noqa: E731
    return [r for r in rows if size(r) < max_chars and len(r["rejected"]["value"]) < max_chars][:count]


def test_sharegpt_preference_pairs_train_smollm2_with_dpo(tmp_path, recipe_file, smollm2):
    folder, gguf_file = smollm2
    pairs = short_pairs(8)
    assert len(pairs) == 8
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))  # the file's own shape: one JSON array
    recipe = base_recipe(
        tmp_path, task="dpo",
        model={"name_or_path": str(folder), "gguf_file": gguf_file, "init": "pretrained"},
        data={"format": "sharegpt_preference", "train": {"path": "pairs.json"}, "eval": {"path": "pairs.json"}},
        peft={"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        training={"max_steps": 4, "learning_rate": 5e-4, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 8, "max_length": 160, "logging_steps": 1, "beta": 0.1,
                  "eval_strategy": "no", "save_strategy": "no"},
        evaluation={"metrics": ["loss", "rewards"], "baseline": True})
    manifest = run(build_plan(load_recipe(recipe_file(recipe))), argv=["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert before["rewards/margins"] == 0.0 and before["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2
    assert after["rewards/margins"] > 0.5 and after["rewards/accuracies"] >= 0.875
    assert after["loss"] < 0.5 * before["loss"]
