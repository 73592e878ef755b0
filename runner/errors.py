"""User-facing errors: every problem with its JSON path and, where we can tell, the fix.

A `RecipeError` is a user's mistake (recipe, command line, data). The CLI prints it
without a traceback and exits with code 2; anything else is a bug in the runner.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str  # JSON pointer into the resolved recipe ("/training/learning_rate"), or "" for the whole recipe
    message: str
    hint: str | None = None

    def render(self) -> str:
        where = self.path or "/"
        text = f"  {where}: {self.message}"
        if self.hint:
            text += f"\n      hint: {self.hint}"
        return text


class RecipeError(Exception):
    """One or more user mistakes, reported together."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        what = f"{count} problem" + ("s" if count != 1 else "")
        head = f"{self.source}: {what}" if self.source else what
        return "\n".join([head] + [p.render() for p in self.problems])


def pointer(parts) -> str:
    """JSON pointer for a sequence of keys and indexes (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def did_you_mean(word: str, choices) -> str | None:
    """'did you mean ...' for a misspelt name, or None when nothing is close."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None
