"""Tool calls in chat data: OpenAI's shape, checked row by row and handed to chat templates as they expect it.

An assistant turn may call tools instead of (or besides) answering:
`{"role": "assistant", "content": null or "", "tool_calls": [{"type": "function", "function": {"name": ...,
"arguments": {...} or a JSON string}}]}`, and the results come back as `{"role": "tool", "content": ...}` turns
(optionally with `tool_call_id` / `name`). A row may carry `tools`, the function schemas the model was shown
(a list, or that list as a JSON string), passed to `apply_chat_template(..., tools=...)`.

Templates read `arguments` as an object (Qwen2.5 and Llama 3.1 write `arguments | tojson`: a JSON string would be
written twice encoded), so rows are stored with objects; `tools` is stored as a JSON string, as TRL's SFTTrainer
reads it, so Arrow never merges the schemas of different rows into one struct. Pure: no torch, no transformers.
"""
from __future__ import annotations

import json

TOOL_ROLE = "tool"
NOT_CALLS = "have tool_calls that are not a list of {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"


def _parsed(value, kind: type):
    """`value`, or the JSON a string holds, when it is a `kind`; else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, kind) else None


def parsed_arguments(value) -> dict | None:
    """A call's arguments as an object (a JSON string is parsed); None when they are neither."""
    return _parsed(value, dict)


def call_problem(call) -> str | None:
    """One entry of `tool_calls`: {"type": "function", "function": {"name", "arguments"}}."""
    if not isinstance(call, dict) or call.get("type", "function") != "function" \
            or not isinstance(call.get("function"), dict):
        return NOT_CALLS
    function = call["function"]
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        return "have a tool call without a function name"
    if parsed_arguments(function.get("arguments")) is None:
        return "have tool call arguments that are neither a JSON object nor a string holding one"
    return None


def turn_problem(turn: dict) -> str | None:
    """The tool parts of one {"role", ...} turn: tool_calls only on assistant turns, each call well formed."""
    calls = turn.get("tool_calls")
    if calls is None:
        return None
    if turn["role"] != "assistant":
        return "have tool_calls on a turn that is not the assistant's"
    if not isinstance(calls, list) or not calls:
        return NOT_CALLS
    return next((p for p in map(call_problem, calls) if p), None)


def order_problem(turns: list) -> str | None:
    """A tool turn answers the tool calls of the assistant turn before it (other tool results may come between)."""
    calling = False
    for turn in turns:
        if turn["role"] == TOOL_ROLE and not calling:
            return "have a tool turn with no tool call before it (a tool result must follow an assistant's tool_calls)"
        if turn["role"] != TOOL_ROLE:
            calling = turn["role"] == "assistant" and bool(turn.get("tool_calls"))
    return None


def tools_problem(value) -> str | None:
    """The `tools` column: a list of function schemas, or that list as a JSON string; null or missing: none."""
    tools = parsed_tools(value)
    if tools is None or not all(isinstance(t, dict) and (isinstance(t.get("function"), dict) or "name" in t)
                                for t in tools):
        return "have tools that are not a list of function schemas ({\"type\": \"function\", \"function\": {...}})"
    return None


def parsed_tools(value) -> list | None:
    """`tools` as a list ([] for null or empty); None when it is neither a list nor a JSON string holding one."""
    if value is None or value == "":
        return []
    return _parsed(value, list)


def has_tool_calls(turns) -> bool:
    return any(isinstance(t, dict) and (t.get("tool_calls") or t.get("role") == TOOL_ROLE) for t in turns or ())


def for_template(turns) -> list[dict]:
    """Turns as a chat template reads them: arguments as objects, a null content as "" (templates concatenate
    it), and no keys that are null (Arrow gives a turn every key another turn of the column has; templates test
    `'tool_calls' in message`)."""
    return [_turn_for_template(turn) for turn in turns]


def _turn_for_template(turn: dict) -> dict:
    out = {key: value for key, value in turn.items() if value is not None}
    out["content"] = turn.get("content") or ""
    if out.get("tool_calls"):
        out["tool_calls"] = [_call_for_template(call) for call in out["tool_calls"]]
    return out


def _call_for_template(call: dict) -> dict:
    function = {key: value for key, value in call["function"].items() if value is not None}
    function["arguments"] = parsed_arguments(function.get("arguments"))
    return {**{key: value for key, value in call.items() if value is not None}, "type": "function",
            "function": function}


def tools_for_template(value) -> list | None:
    """The schemas for apply_chat_template(tools=...): None when there are none (Llama 3.1 writes its tool
    preamble even for an empty list)."""
    return parsed_tools(value) or None


def stored_tools(value) -> str | None:
    """`tools` as stored in converted rows: a JSON string (TRL's SFTTrainer parses it), None when there are none."""
    tools = parsed_tools(value)
    return json.dumps(tools, ensure_ascii=False) if tools else None


def to_messages_row(row: dict) -> dict:
    """A `messages` row as it is stored for training: calls' arguments as objects, tools as a JSON string."""
    out = {"messages": for_template(row["messages"]) if has_tool_calls(row["messages"]) else row["messages"]}
    if "tools" in row:
        out["tools"] = stored_tools(row["tools"])
    return out


def rows_with_calls(dataset, column: str = "messages", limit: int = 10) -> tuple[int, list[int]]:
    """(how many rows of `dataset` have tool calls or tool turns, the first `limit` row numbers); of a stream, among
    its first rows (runner/data/streaming.py HEAD_ROWS), which the template is checked against before training."""
    from runner.data.streaming import head, is_stream  # streaming checks rows with rows.py, which imports this

    if is_stream(dataset):
        dataset = head(dataset, None)
    if column not in (getattr(dataset, "column_names", None) or ()):
        return 0, []
    count, first, number = 0, [], 0
    for batch in dataset.select_columns([column]).iter(batch_size=1000):  # not the whole column in memory at once
        for turns in batch[column]:
            number += 1
            if has_tool_calls(turns):
                count += 1
                first += [number] if len(first) < limit else []
    return count, first
