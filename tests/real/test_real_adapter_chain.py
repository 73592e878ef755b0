"""A LoRA run on a real instruct model (SmolLM2-135M-Instruct, read from its GGUF file) as the start of the next run,
merged as it loads: the base is found again through the run's plan (the GGUF file, which peft does not record), the
next run starts at the run's held-out loss, trains a new adapter and still answers a plain question."""
from __future__ import annotations

import json

import pytest

from conftest import base_recipe, write_jsonl
from real_models import alpaca_rows, as_messages, smollm2  # noqa: F401 - smollm2 is a fixture
from runner.commands.inference import predict
from runner.commands.run import run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

pytestmark = pytest.mark.real

QUESTION = "What is the capital of France?"
# float32 (no bf16 autocast): the merged model and the adapter on its base agree to float precision
TRAINING = {"max_steps": 4, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
            "max_length": 128, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "bf16": False}
DATA = {"format": "messages", "train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}}
LORA = {"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def test_a_smollm2_lora_run_merged_starts_the_next_run(tmp_path, recipe_file, smollm2):
    folder, gguf_file = smollm2
    write_jsonl(tmp_path / "train.jsonl", [as_messages(r) for r in alpaca_rows(32)])
    write_jsonl(tmp_path / "eval.jsonl", [as_messages(r) for r in alpaca_rows(16, skip=32)])
    write_jsonl(tmp_path / "more.jsonl", [as_messages(r) for r in alpaca_rows(32, skip=48)])  # the next run's
    first = base_recipe(tmp_path, model={"name_or_path": str(folder), "gguf_file": gguf_file, "init": "pretrained"},
                        data=DATA, peft=LORA, training=TRAINING, evaluation={"baseline": True, "metrics": ["loss"]},
                        output={"dir": str(tmp_path / "sft-lora")})
    sft = run(build_plan(load_recipe(recipe_file(first, "sft.json"))), argv=["test"])["metrics"]

    second = base_recipe(tmp_path, data={**DATA, "train": {"path": "more.jsonl"}}, peft={**LORA, "r": 8}, training={**TRAINING, "max_steps": 4},
                         evaluation={"baseline": True, "metrics": ["loss"]}, output={"dir": str(tmp_path / "next")})
    second["model"] = {"name_or_path": str(tmp_path / "sft-lora"), "adapter": "merge"}
    plan = build_plan(load_recipe(recipe_file(second, "next.json")))
    assert plan["model"]["adapter_run"]["base"]["gguf_file"] == gguf_file
    chained = run(plan, argv=["test"])["metrics"]
    print(f"smollm2 sft lora: held-out loss {sft['before']['loss']:.4f} -> {sft['after']['loss']:.4f}; merged, "
          f"the next run {chained['before']['loss']:.4f} -> {chained['after']['loss']:.4f}")
    # measured 2.0861 -> 2.0572, the next run 2.0572 -> 2.0479 (the same rows again instead raise it: 2.10)
    assert sft["after"]["loss"] < sft["before"]["loss"] - 0.015  # the adapter moved the model: the base is elsewhere
    assert chained["before"]["loss"] == pytest.approx(sft["after"]["loss"], rel=1e-4)
    assert chained["after"]["loss"] < chained["before"]["loss"]
    saved = json.loads((tmp_path / "next" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "sft-lora")
    answer = predict(tmp_path / "next", [QUESTION], max_new_tokens=16)[0]["output"]  # base, run's adapter, new adapter
    print(f"smollm2 chained: {QUESTION!r} -> {answer!r}")
    assert "Paris" in answer, answer
