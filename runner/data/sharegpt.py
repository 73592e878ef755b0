"""ShareGPT rows, as LLaMA-Factory and axolotl define them: `conversations` of {"from", "value"} turns (human, gpt,
system), an optional `system` prompt, and for preference pairs `chosen` / `rejected` gpt turns after a
conversation that ends with the human's request. Checked turn by turn, then converted to the chat `messages` (SFT)
or the conversational `prompt` / `chosen` / `rejected` (DPO) TRL trains on.

Tool turns, as LLaMA-Factory defines them (SFT only): a `function_call` turn stands where a gpt turn would, its
value a JSON string {"name", "arguments"} (or a list of them: parallel calls), and an `observation` turn (the tool's
result) where a human turn would. They become an assistant turn with OpenAI's `tool_calls` and a `tool` turn
(runner/data/tool_calls.py); LLaMA-Factory's `tools` column (a JSON string of function schemas) becomes `tools`.
"""
from __future__ import annotations

import json

from runner.data import tool_calls

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
TOOL_ROLES = {"function_call": "assistant", "observation": "tool"}  # LLaMA-Factory's tool turns (SFT only)
# The turns that may stand in each place of the alternation (after an optional system turn): asking, answering.
ASKING, ANSWERING = ("human", "observation"), ("gpt", "function_call")


def _turn_problem(turn, tools: bool) -> str | None:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
        return "have a turn that is not {\"from\", \"value\"}"
    if turn["from"] in TOOL_ROLES and not tools:
        return "have a tool turn (function_call / observation), which preference pairs do not take"
    if turn["from"] == "function_call":
        return _call_problem(turn["value"])
    if turn["from"] not in ROLES and turn["from"] not in TOOL_ROLES:
        known = list(ROLES) + (list(TOOL_ROLES) if tools else [])
        return f"have a turn whose `from` is {turn['from']!r}, not one of {known}"
    return None


def _call_problem(value: str) -> str | None:
    calls = _parsed_calls(value)
    if calls is None:
        return "have a function_call turn whose value is not a JSON {\"name\", \"arguments\"} (or a list of them)"
    return next((p for p in map(tool_calls.call_problem, calls) if p), None)


def _parsed_calls(value: str) -> list[dict] | None:
    """A function_call value as OpenAI tool calls; None when it is not JSON {"name", "arguments"} or a list of them."""
    try:
        found = json.loads(value)
    except ValueError:
        return None
    found = found if isinstance(found, list) else [found]
    if not found or not all(isinstance(call, dict) and "name" in call for call in found):
        return None
    return [{"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}
            for call in found]


def _dialogue_problem(turns, last: tuple[str, ...], tools: bool) -> str | None:
    """A system turn may open; then asking and answering turns alternate (human or observation, gpt or
    function_call), asking first; the last one is one of `last`."""
    if not isinstance(turns, list) or not turns:
        return "have no turns"
    found = next((p for p in (_turn_problem(turn, tools) for turn in turns) if p), None)
    if found:
        return found
    roles = [turn["from"] for turn in turns]
    if roles[0] == "system":
        roles = roles[1:]
    if not roles or any(role not in (ASKING, ANSWERING)[i % 2] for i, role in enumerate(roles)):
        return "have turns that do not alternate human, gpt, human, ... (after an optional system turn)"
    if any(role == "observation" and (i == 0 or roles[i - 1] != "function_call") for i, role in enumerate(roles)):
        return "have an observation turn that does not follow a function_call turn"
    if roles[-1] not in last:
        return ("end without an answer (the last turn is not gpt or function_call)" if "gpt" in last else
                "end with an answer (the conversation before chosen/rejected must end with the human's turn)")
    return None


def conversation_problem(value) -> str | None:
    """SFT: a whole conversation, ending with the answer (or the tool call) it teaches."""
    return _dialogue_problem(value, last=ANSWERING, tools=True)


def request_problem(value) -> str | None:
    """Preference pairs: the conversation up to the request that chosen and rejected answer."""
    return _dialogue_problem(value, last=("human",), tools=False)


def answer_problem(value) -> str | None:
    """A preference pair's chosen or rejected answer: one gpt turn."""
    problem = _turn_problem(value, tools=False)
    if problem is None and value["from"] != "gpt":
        return "are not a gpt turn"
    if problem is None and not value["value"].strip():
        return "are empty"
    return problem


def system_problem(row: dict) -> str | None:
    """A `system` column and an opening system turn would give two system messages: refused, not merged."""
    turns = row.get("conversations")
    opening = isinstance(turns, list) and turns and isinstance(turns[0], dict) and turns[0].get("from") == "system"
    return "have both a system column and an opening system turn (keep one)" if row.get("system") and opening else None


def _messages(row: dict) -> list[dict]:
    system = row.get("system")
    opening = [{"role": "system", "content": system}] if system else []
    return opening + [_message(turn) for turn in row["conversations"]]


def _message(turn: dict) -> dict:
    if turn["from"] == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": _parsed_calls(turn["value"])}
    return {"role": ROLES.get(turn["from"]) or TOOL_ROLES[turn["from"]], "content": turn["value"]}


def to_messages(row: dict) -> dict:
    """A ShareGPT conversation as chat messages (with the tools it was shown, when the row names any)."""
    converted = tool_calls.to_messages_row({"messages": _messages(row)})
    return {**converted, "tools": tool_calls.stored_tools(_openai_tools(row.get("tools")))} if "tools" in row \
        else converted


def _openai_tools(value) -> list:
    """LLaMA-Factory's tools are bare function schemas ({"name", "description", "parameters"}); templates read
    OpenAI's shape, {"type": "function", "function": schema}."""
    return [tool if "function" in tool else {"type": "function", "function": tool}
            for tool in tool_calls.parsed_tools(value) or []]


def to_preference(row: dict) -> dict:
    """A ShareGPT preference pair as TRL's conversational preference row."""
    return {"prompt": _messages(row),
            "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}]}
