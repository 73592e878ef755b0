"""ShareGPT rows, as LLaMA-Factory and axolotl define them: `conversations` of {"from", "value"} turns (human, gpt,
system), an optional `system` prompt, and for preference pairs `chosen` / `rejected` gpt turns after a
conversation that ends with the human's request. Checked turn by turn, then converted to the chat `messages` (SFT)
or the conversational `prompt` / `chosen` / `rejected` (DPO) TRL trains on.
"""
from __future__ import annotations

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
TOOL_ROLES = ("function_call", "observation")  # ShareGPT's tool turns: not converted (yet)


def _turn_problem(turn) -> str | None:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
        return "have a turn that is not {\"from\", \"value\"}"
    if turn["from"] in TOOL_ROLES:
        return "have a tool turn (function_call / observation), which the runner does not convert yet"
    if turn["from"] not in ROLES:
        return f"have a turn whose `from` is {turn['from']!r}, not one of {list(ROLES)}"
    return None


def _dialogue_problem(turns, last: str) -> str | None:
    """A system turn may open; then human and gpt alternate, human first, and the last one is `last`."""
    if not isinstance(turns, list) or not turns:
        return "have no turns"
    found = next((p for p in map(_turn_problem, turns) if p), None)
    if found:
        return found
    roles = [turn["from"] for turn in turns]
    if roles[0] == "system":
        roles = roles[1:]
    if not roles or any(role != ("human", "gpt")[i % 2] for i, role in enumerate(roles)):
        return "have turns that do not alternate human, gpt, human, ... (after an optional system turn)"
    if roles[-1] != last:
        return ("end without an answer (the last turn is not gpt)" if last == "gpt" else
                "end with an answer (the conversation before chosen/rejected must end with the human's turn)")
    return None


def conversation_problem(value) -> str | None:
    """SFT: a whole conversation, ending with the answer it teaches."""
    return _dialogue_problem(value, last="gpt")


def request_problem(value) -> str | None:
    """Preference pairs: the conversation up to the request that chosen and rejected answer."""
    return _dialogue_problem(value, last="human")


def answer_problem(value) -> str | None:
    """A preference pair's chosen or rejected answer: one gpt turn."""
    problem = _turn_problem(value)
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
    return opening + [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]


def to_messages(row: dict) -> dict:
    """A ShareGPT conversation as chat messages."""
    return {"messages": _messages(row)}


def to_preference(row: dict) -> dict:
    """A ShareGPT preference pair as TRL's conversational preference row."""
    return {"prompt": _messages(row),
            "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}]}
