"""Tool calls on real weights: SmolLM2-135M-Instruct (read from its GGUF file).

SmolLM2's own template writes only each turn's content, so a call's name and arguments would vanish: the runner
refuses it before any weights load. With a template that has tool support (Qwen2.5's, the file TRL ships; SmolLM2's
tokenizer has ChatML's `<|im_start|>` and `<|im_end|>`), the loss is on the calls and answers, never on the tool
results, and three LoRA steps lower the held-out loss. Short rows (111 tokens): ~3-5 s per step on a quiet machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from commandline import cli
from conftest import base_recipe, write_json, write_jsonl
from real_models import smollm2  # noqa: F401 - a fixture
from runner.commands.run import prepare, train
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

pytestmark = pytest.mark.real

QWEN2_5 = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen2_5.jinja"
CITIES = ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Hanoi", "Dakar", "Riga", "Bern", "Accra", "Doha", "Kyiv",
          "Sofia", "Minsk", "Tunis", "Seoul", "Dhaka", "Rome", "Paris", "Baku"]
SKIES = ["sunny", "raining", "snowing", "cloudy"]


def weather_rows(start: int, count: int) -> list[dict]:
    """Ask for a city's weather, call get_weather, read the result, answer from it."""
    rows = []
    for n in range(start, start + count):
        city, sky, degrees = CITIES[n % len(CITIES)], SKIES[n % len(SKIES)], 5 + n % 20
        rows.append({"messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "content": f"{sky}, {degrees} C"},
            {"role": "assistant", "content": f"It is {sky} in {city}, {degrees} degrees."}]})
    return rows


def smollm2_recipe(tmp_path, smollm2, **model) -> dict:
    folder, gguf_file = smollm2
    return base_recipe(
        tmp_path,
        model={"name_or_path": str(folder), "gguf_file": gguf_file, "init": "pretrained", **model},
        data={"format": "messages", "train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
        peft={"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        training={"max_steps": 3, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 4, "max_length": 128, "logging_steps": 1, "eval_strategy": "no",
                  "save_strategy": "no"},
        evaluation={"baseline": True, "metrics": ["loss"]},
    )


def test_smollm2s_own_template_is_refused_for_tool_calls_before_any_weights_load(tmp_path, smollm2):
    write_jsonl(tmp_path / "train.jsonl", weather_rows(0, 4))
    write_jsonl(tmp_path / "eval.jsonl", weather_rows(4, 2))
    write_json(tmp_path / "recipe.json", smollm2_recipe(tmp_path, smollm2))
    result = cli("check-data", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"/model/chat_template: the data call tools (/data/train: rows 1, 2, 3, 4 of {tmp_path / 'train.jsonl'}; "
            f"/data/eval: rows 1, 2 of {tmp_path / 'eval.jsonl'}), but the chat template drops the call's function "
            "name and its arguments (it has no tool support)") in result.stderr, result.stderr
    assert "hint: name a Jinja template file with tool support in model.chat_template" in result.stderr


def test_with_qwen2_5s_template_lora_learns_the_calls_and_answers_never_the_results(tmp_path, recipe_file, smollm2):
    rows = weather_rows(0, 12)  # 111 tokens each with Qwen2.5's template, 44 of them trained on
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", weather_rows(12, 4))
    recipe = smollm2_recipe(tmp_path, smollm2, chat_template=str(QWEN2_5))
    prepared = prepare(build_plan(load_recipe(recipe_file(recipe))))
    trainer, plan = prepared.trainer, prepared.plan
    calls = [row["messages"][1]["tool_calls"][0]["function"]["arguments"] for row in rows]
    wanted = {(f'<tool_call>\n{{"name": "get_weather", "arguments": {call}}}\n</tool_call><|im_end|>',
               row["messages"][3]["content"] + "<|im_end|>") for call, row in zip(calls, rows)}
    for example in trainer.train_dataset:  # shuffled: each example trains on exactly one row's call and answer
        labels = trainer.data_collator([example])["labels"][0].tolist()
        runs, current = [], []
        for token, label in zip(example["input_ids"], labels):
            if label != -100:
                current.append(token)
            elif current:
                runs, current = runs + [current], []
        runs = tuple(trainer.processing_class.decode(run) for run in runs + ([current] if current else []))
        assert runs in wanted, runs
    manifest = train(plan, prepared, ["test"])
    losses = manifest["metrics"]
    print(f"tool calls: held-out loss {losses['before']['loss']:.4f} -> {losses['after']['loss']:.4f}")
    assert losses["after"]["loss"] < 0.7 * losses["before"]["loss"], losses
