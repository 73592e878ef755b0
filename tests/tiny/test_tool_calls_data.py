"""Conversations with tool calls, end to end on a tiny model: the trainer's rows carry loss on the assistant's calls
and answers only, a few steps learn, ShareGPT's tool turns train exactly as the same messages, and a template
without tool support or a bad row stops the run before any model loads.

The stand-in model is the tiny Llama with ChatML's special tokens added; its chat template is Qwen2.5's, the file
TRL ships (`trl/chat_templates/qwen2_5.jinja`, Qwen2.5-Instruct's own template).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from commandline import cli
from conftest import TINY_MODEL, base_recipe, write_json, write_jsonl
from runner.commands.run import prepare, run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

QWEN2_5 = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen2_5.jinja"
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


def tool_rows(count: int, tools: bool = True) -> list[dict]:
    """The user asks for a sum, the assistant calls `add` (arguments as an object in even rows, as a JSON string in
    odd ones, as OpenAI's API returns them), the tool answers, the assistant states the result; `tools`: with the
    schema of `add` (Qwen2.5's template then writes it into a long system turn)."""
    rows = []
    for n in range(count):
        a, b = 3 + 7 * n % 50, 11 + 5 * n % 40
        arguments = {"a": a, "b": b}
        rows.append({"messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": None if n % 2 else "", "tool_calls": [{"type": "function", "function": {
                "name": "add", "arguments": json.dumps(arguments) if n % 2 else arguments}}]},
            {"role": "tool", "content": str(a + b), "tool_call_id": f"call_{n}"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]} | ({"tools": [ADD]} if tools else {}))
    return rows


def arguments(row: dict) -> dict:
    given = row["messages"][1]["tool_calls"][0]["function"]["arguments"]
    return json.loads(given) if isinstance(given, str) else given


def trained_texts(rows: list[dict]) -> list[list[str]]:
    """What each row must train on with Qwen2.5's template: the call and the answer, each with `<|im_end|>`."""
    return [[f'<tool_call>\n{{"name": "add", "arguments": {json.dumps(arguments(row))}}}\n</tool_call><|im_end|>',
             row["messages"][3]["content"] + "<|im_end|>"] for row in rows]


@pytest.fixture
def chatml_model(tmp_path) -> Path:
    """The tiny Llama's files with ChatML's special tokens (as Qwen2.5's tokenizer has them) and no template."""
    from transformers import AutoTokenizer

    model_dir = tmp_path / "stand-in-qwen"
    shutil.copytree(TINY_MODEL, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]},
                                 replace_extra_special_tokens=False)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").unlink()
    return model_dir


def qwen_recipe(tmp_path, model_dir: Path, **sections) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = {"name_or_path": str(model_dir), "init": "random", "chat_template": str(QWEN2_5),
             "config_overrides": {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}}
    sections.setdefault("data", {"format": "messages"})
    return base_recipe(tmp_path, model=model, **sections)


def runs_of_loss(trainer, row: dict) -> list[str]:
    """The text of each run of tokens whose label is not -100 in a prepared row, as the collator builds labels."""
    labels = trainer.data_collator([row])["labels"][0].tolist()
    runs, current = [], []
    for token, label in zip(row["input_ids"], labels):
        if label != -100:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return [trainer.processing_class.decode(run) for run in runs + ([current] if current else [])]


def test_the_trainer_learns_the_calls_and_answers_never_the_tool_results(tmp_path, recipe_file, chatml_model):
    rows = tool_rows(8)
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = qwen_recipe(tmp_path, chatml_model, training={"max_length": 1024})
    trainer = prepare(build_plan(load_recipe(recipe_file(recipe)))).trainer
    prepared = [runs_of_loss(trainer, row) for row in trainer.train_dataset]
    assert prepared == trained_texts(rows)
    text = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert '"name": "add"' in text and "<tool_response>\n14\n</tool_response>" in text  # tools and result rendered
    # with the loss on every token TRL renders the rows itself: the same tokens (arguments as objects, tools parsed)
    recipe["training"]["assistant_only_loss"] = False
    recipe["output"] = {"dir": str(tmp_path / "every-token")}
    every = prepare(build_plan(load_recipe(recipe_file(recipe, "every-token.json")))).trainer.train_dataset
    assert every["input_ids"] == trainer.train_dataset["input_ids"]


def test_a_few_steps_on_tool_calls_lower_the_loss_and_change_the_weights(tmp_path, recipe_file, chatml_model):
    import torch
    from safetensors.torch import load_file

    from runner.train import models

    write_jsonl(tmp_path / "train.jsonl", tool_rows(16, tools=False))
    recipe = qwen_recipe(tmp_path, chatml_model, data={"format": "messages", "eval": {"path": "train.jsonl"}},
                         training={"max_steps": 10, "learning_rate": 5e-3, "per_device_train_batch_size": 4,
                                   "max_length": 320, "eval_strategy": "no", "eval_on_start": True,
                                   "per_device_eval_batch_size": 16})
    plan = build_plan(load_recipe(recipe_file(recipe)))
    manifest = run(plan, argv=["test"])
    first, *_, last = [h["eval_loss"] for h in manifest["history"] if "eval_loss" in h]
    print(f"tool calls, tiny model: loss on the calls and answers {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first, (first, last)
    before = models.load_model(plan["model"], plan["recipe"]["training"]["seed"]).state_dict()
    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert all(not torch.equal(value, before[key]) for key, value in saved.items())


def test_sharegpt_tool_turns_train_exactly_as_the_same_messages(tmp_path, recipe_file, chatml_model):
    """LLaMA-Factory's function_call / observation turns and its `tools` column (a JSON string of bare function
    schemas) become the OpenAI-shaped conversation: the trainer holds the same token ids and labels."""
    rows = tool_rows(6)
    shared = [{"conversations": [
        {"from": "human", "value": row["messages"][0]["content"]},
        {"from": "function_call", "value": json.dumps({"name": "add", "arguments": arguments(row)})},
        {"from": "observation", "value": row["messages"][2]["content"]},
        {"from": "gpt", "value": row["messages"][3]["content"]}],
        "tools": json.dumps([ADD["function"]])} for row in rows]
    prepared = {}
    for name, data, fmt in (("sharegpt", shared, "sharegpt"), ("messages", rows, "messages")):
        write_jsonl(tmp_path / f"{name}.jsonl", data)
        recipe = qwen_recipe(tmp_path, chatml_model, data={"format": fmt, "train": {"path": f"{name}.jsonl"}},
                             training={"max_length": 1024}, output={"dir": str(tmp_path / name)})
        prepared[name] = prepare(build_plan(load_recipe(recipe_file(recipe, f"{name}.json")))).trainer.train_dataset[:]
    assert prepared["sharegpt"] == prepared["messages"]
    assert len(prepared["messages"]["input_ids"]) == 6


def test_a_template_without_tool_support_is_refused_before_any_model_loads(tmp_path):
    """The tiny model's own template writes each turn's content only: a call's name and arguments vanish."""
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}]}]
                + tool_rows(3))
    write_json(tmp_path / "recipe.json", base_recipe(tmp_path, data={"format": "messages"}))
    result = cli(str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"/model/chat_template: the data call tools (/data/train: rows 2, 3, 4 of {tmp_path / 'train.jsonl'}), "
            "but the chat template drops the call's function name and its arguments (it has no tool support)"
            ) in result.stderr
    assert "hint: name a Jinja template file with tool support in model.chat_template" in result.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_bad_tool_rows_stop_check_data_with_their_row_numbers(tmp_path, chatml_model):
    rows = tool_rows(6)
    rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{a: 1"  # not JSON
    rows[2]["messages"] = [rows[2]["messages"][0], rows[2]["messages"][2], rows[2]["messages"][3]]  # no call
    rows[3]["messages"][1]["tool_calls"] = {"name": "add"}  # not a list
    rows[4]["tools"] = "add(a, b)"
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_json(tmp_path / "recipe.json", qwen_recipe(tmp_path, chatml_model))
    result = cli("check-data", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for line in (
        "/data/train: 1 rows have tool call arguments that are neither a JSON object nor a string holding one: rows 2 "
        "(column messages)",
        "/data/train: 1 rows have a tool turn with no tool call before it (a tool result must follow an assistant's "
        "tool_calls): rows 3 (column messages)",
        "/data/train: 1 rows have tool_calls that are not a list of {\"type\": \"function\", \"function\": {\"name\", "
        "\"arguments\"}}: rows 4 (column messages)",
        "/data/train: 1 rows have tools that are not a list of function schemas",
    ):
        assert line in result.stderr, result.stderr


def test_a_row_the_template_refuses_is_named_before_any_model_loads(tmp_path):
    """Llama 3.1's template takes one call per turn (jinja's raise_exception): a row with two is the user's to fix."""
    rows = tool_rows(3, tools=False)
    rows[1]["messages"][1]["tool_calls"] *= 2
    write_jsonl(tmp_path / "train.jsonl", rows)
    llama = QWEN2_5.with_name("llama3_1.jinja")
    write_json(tmp_path / "recipe.json", base_recipe(tmp_path, model={"chat_template": str(llama)},
                                                     data={"format": "messages"}, training={"max_length": 512}))
    result = cli("check-data", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ("/model/chat_template: the chat template cannot render row 2 of /data/train: TemplateError: This model "
            "only supports single tool-calls at once!") in result.stderr


def test_generation_prompts_hold_the_calls_and_results_and_a_call_at_the_end_has_no_reference(chatml_model):
    """Generative metrics prompt with everything before the last answer, rendered as in training."""
    from transformers import AutoTokenizer

    from runner.evaluate.generation import messages

    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    tokenizer.chat_template = QWEN2_5.read_text()
    row = tool_rows(2)[1]  # arguments as a JSON string
    row = {**row, "tools": json.dumps(row["tools"])}
    ids, reference = messages(row, tokenizer)
    prompt = tokenizer.decode(ids)
    assert reference == "10 plus 16 is 26."
    assert prompt.endswith('<tool_call>\n{"name": "add", "arguments": {"a": 10, "b": 16}}\n</tool_call><|im_end|>\n'
                           "<|im_start|>user\n<tool_response>\n26\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert '"name": "add", "description": "Add two integers."' in prompt  # the tools, in the system turn
    assert messages({"messages": row["messages"][:2]}, tokenizer) is None
