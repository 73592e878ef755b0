"""Row checks: examples that would train on nothing or crash a trainer, found before any model loads.

Each problem names the recipe path of the source, the file, the column, the affected rows (the
first few) and how many there are.
"""
from __future__ import annotations

from runner.data import sharegpt
from runner.data import tool_calls
from runner.errors import Problem

ROLES = ("system", "user", "assistant", "tool")
SHOWN_ROWS = 10  # rows named in a problem; its count covers all of them


def _text(value) -> str | None:
    if not isinstance(value, str):
        return "are not text"
    return "are empty" if not value.strip() else None


def _turns(value, tools: bool = False) -> str | None:
    """Chat turns; `tools`: they may call tools (format `messages`: runner/data/tool_calls.py). Elsewhere (prompt,
    completion, preference conversations) the runner does not hand tool calls to the template in its shape: refused."""
    if not isinstance(value, list) or not value:
        return "have no turns"
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn or not _has_content(turn):
            return "have a turn that is not {\"role\", \"content\"}"
        if turn["role"] not in ROLES:
            return f"have a turn with a role outside {list(ROLES)}"
        if not tools and tool_calls.has_tool_calls([turn]):
            return "have tool calls or tool turns, which only formats messages and sharegpt take"
        problem = tool_calls.turn_problem(turn)
        if problem:
            return problem
    return tool_calls.order_problem(value)


def _has_content(turn: dict) -> bool:
    """Text content; an assistant turn that calls tools may have none (OpenAI writes null)."""
    return isinstance(turn.get("content"), str) or turn.get("content") is None and turn.get("tool_calls") is not None


def _conversation(value) -> str | None:
    problem = _turns(value, tools=True)
    if problem is None and not any(turn["role"] == "assistant" for turn in value):
        return "have no assistant turn (nothing to learn)"
    return problem


def _text_or_turns(value) -> str | None:
    return _turns(value) if isinstance(value, list) else _text(value)


def _label(value) -> str | None:
    ok = isinstance(value, str) and value.strip() or isinstance(value, int) and not isinstance(value, bool)
    return None if ok else "have no label (empty, or neither a name nor an integer)"


def _desirable(value) -> str | None:
    return None if isinstance(value, bool) else "have a label that is not true or false (desirable or not)"


CHECKS = {
    "text": _text, "prompt": _text_or_turns, "completion": _text_or_turns, "messages": _conversation,
    "instruction": _text, "output": _text, "chosen": _text_or_turns, "rejected": _text_or_turns,
    "label": _label, "text_pair": _text, "input": _text, "answer": _text, "tools": tool_calls.tools_problem,
}
OPTIONAL_WHEN_EMPTY = ("text_pair", "input", "prompt", "system", "answer", "tools")  # optional: may be missing or empty
# A format whose fields hold other shapes than the same-named fields of other formats: its own checks.
FORMAT_CHECKS = {
    "sharegpt": {"conversations": sharegpt.conversation_problem, "system": _text, "tools": tool_calls.tools_problem},
    "unpaired_preference": {"label": _desirable},
    "sharegpt_preference": {"conversations": sharegpt.request_problem, "chosen": sharegpt.answer_problem,
                            "rejected": sharegpt.answer_problem, "system": _text},
}


# A format whose rows are checked as a whole too (fields that contradict each other).
ROW_CHECKS = {"sharegpt": sharegpt.system_problem, "sharegpt_preference": sharegpt.system_problem}


def row_problems(dataset, columns: dict, optional: tuple, where: str, name: str, fmt: str = "") -> list[Problem]:
    """Problems with the rows of a canonical dataset; `columns` maps canonical field -> source column."""
    found: dict[tuple[str, str], list[int]] = {}
    row = 0
    for batch in dataset.iter(batch_size=1000):
        size = len(next(iter(batch.values())))
        for i in range(size):
            row += 1
            for found_in in row_reasons({field: values[i] for field, values in batch.items()}, optional, fmt):
                found.setdefault(found_in, []).append(row)
    return [problem(where, reason, rows, columns.get(field, field), name) for (field, reason), rows in found.items()]


def row_reasons(row: dict, optional: tuple, fmt: str) -> list[tuple[str, str]]:
    """(field, what is wrong) for each problem of one canonical row."""
    checks = {**CHECKS, **FORMAT_CHECKS.get(fmt, {})}
    found = []
    for field, value in row.items():
        if field in optional and field in OPTIONAL_WHEN_EMPTY and value in (None, ""):
            continue
        reason = checks[field](value)
        if reason:
            found.append((field, reason))
    whole = ROW_CHECKS.get(fmt)
    reason = whole(row) if whole else None
    return found + ([("conversations", reason)] if reason else [])


def problem(where: str, reason: str, rows: list[int], column: str, name: str) -> Problem:
    return Problem(where, f"{len(rows)} rows {reason}: rows {shown_rows(rows)} (column {column}) in {name}",
                   HINTS.get(reason))


HINTS = {
    "are not text": "write them as strings (in JSON \"42\", not 42; CSV and TSV cells of the format's text columns "
                    "are read as strings already)",
    "are empty": "fill them in or remove those rows",
}


def shown_rows(rows: list[int], count: int | None = None) -> str:
    """Row numbers for a message: the first SHOWN_ROWS, then '...' when there are more (`count`: how many in all,
    where `rows` holds only the first few)."""
    total = len(rows) if count is None else count
    return ", ".join(str(r) for r in rows[:SHOWN_ROWS]) + (", ..." if total > min(len(rows), SHOWN_ROWS) else "")
