"""`validate` and `plan` refuse a chat template that cannot write tool calls when the data call tools, where both
can be seen without loading anything: the template is a file (model.chat_template, or the local tokenizer
directory's `chat_template.jinja` / `tokenizer_config.json`) and the first row of a local JSON/JSONL training file
calls tools. A Jinja template whose text never names `tool_calls` cannot write a call.

This is only the early, certain case. The exact check renders the template on a conversation with a call before
any weights load (runner/data/chat_masks.py: tool_problems), for every template, with the rows that call tools.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import Problem
from runner.plan.data_templates import first_row
from runner.recipe.sources import split_sources

TOOL_FIX = ("name a Jinja template file with tool support in model.chat_template: one that renders assistant "
            "tool_calls and tool turns (Qwen2.5's, Qwen3's or Llama 3.1's, e.g. the files in trl/chat_templates/), "
            "or remove the tool calls and tool turns from the data")
# What marks a turn that calls tools or returns a result: OpenAI's (`messages`) and LLaMA-Factory's (`sharegpt`).
TOOL_TURNS = {"messages": lambda turn: bool(turn.get("tool_calls")) or turn.get("role") == "tool",
              "sharegpt": lambda turn: turn.get("from") in ("function_call", "observation")}
TURNS_FIELD = {"messages": "messages", "sharegpt": "conversations"}


def check_tool_template(doc: dict, fmt: str) -> list[Problem]:
    """`fmt`: the data section's format (a source of a mixture may name its own)."""
    for where, source in split_sources(doc["data"], "train"):
        own = isinstance(doc["data"]["train"], list)
        source_format = (own and source.get("format")) or fmt
        columns = (own and source.get("columns")) or doc["data"]["columns"]
        if source_format not in TOOL_TURNS:
            continue
        row = first_row(source)
        turns = row.get(columns.get(TURNS_FIELD[source_format], TURNS_FIELD[source_format])) if row else None
        if not isinstance(turns, list) or not any(isinstance(t, dict) and TOOL_TURNS[source_format](t) for t in turns):
            continue
        found = template_text(doc["model"])
        if found is None or "tool_calls" in found[1]:
            return []
        return [Problem("/model/chat_template", f"the data call tools ({where}: the first row of {source['path']}), "
                                                f"but the chat template ({found[0]}) never reads a turn's tool_calls: "
                                                "it cannot write the calls (it has no tool support)", TOOL_FIX)]
    return []


def template_text(model: dict) -> tuple[str, str] | None:
    """(where, the Jinja text) of the chat template a run will use, when it is a local file; else None."""
    if model["chat_template"]:
        return _read(Path(model["chat_template"]))
    folder = Path(model["tokenizer"] or model["name_or_path"])
    if model["gguf_file"] and not model["tokenizer"] or not folder.is_absolute():
        return None  # the template is inside a GGUF file or on the Hub: checked when the tokenizer loads
    found = _read(folder / "chat_template.jinja")
    if found:
        return found
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    text = config.get("chat_template") if isinstance(config, dict) else None
    return (str(folder / "tokenizer_config.json"), text) if isinstance(text, str) else None


def _read(path: Path) -> tuple[str, str] | None:
    try:
        return str(path), path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
