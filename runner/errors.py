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


# errno -> what to do, for faults of the machine rather than of the recipe. Kept to errors a runner bug cannot
# cause (a wrong path it built gives ENOENT, ENOTDIR or EACCES: those stay tracebacks, except EACCES on a named file)
ENVIRONMENT_FAULTS = {
    "ENOSPC": "free space on that filesystem (df -h), or choose an output.dir elsewhere; finished files are kept",
    "EDQUOT": "your disk quota is used up: free space, or choose an output.dir elsewhere",
    "EROFS": "the filesystem is read-only: choose an output.dir on a writable one",
    "EIO": "the disk reported an I/O error: check the device, then run again",
    "ESTALE": "the network filesystem lost the file (stale handle): check the mount, then run again",
    "ELOOP": "a symbolic link points (through others) back to itself: fix or remove the link",
    "EACCES": "you may not write or read that file: fix its permissions, or choose another path",
}


def environment_fault(exc: BaseException) -> RecipeError | None:
    """A RecipeError (exit 2, no traceback) for an OSError the machine caused, or a library's error that carries
    one in its text (safetensors' Rust writer: "I/O error: No space left on device (os error 28)"); None for
    anything else."""
    import errno
    import re

    if not isinstance(exc, OSError):
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if not found:
            return None
        exc = OSError(int(found.group(1)), str(exc).strip().splitlines()[0])
    name = errno.errorcode.get(exc.errno or 0)
    if name not in ENVIRONMENT_FAULTS or (name == "EACCES" and not exc.filename):
        return None
    where = f": {exc.filename}" if exc.filename else ""
    return RecipeError([Problem("", f"{exc.strerror or exc}{where}", ENVIRONMENT_FAULTS[name])])
