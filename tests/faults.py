"""The fault harness's common checks: what every careless-user case asserts, whatever it breaks.

A case runs the command line as a user does (a fresh `python -m runner` process) and asserts:
the exit code, no traceback, a message that names what is wrong (path, row, file) and the fix,
and that every file the user had is byte for byte as it was (`Snapshot`).
"""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXIT_USER_ERROR = 2


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # what a failing assertion shows
        return f"exit {self.code}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"


def cli(*args, cwd=ROOT, env: dict | None = None, timeout: float = 600) -> Outcome:
    """`python -m runner ARGS` in a fresh process, as a user runs it."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_user_error(outcome: Outcome, *named: str, code: int = EXIT_USER_ERROR) -> None:
    """Exit `code` (2: a user mistake or environment fault), no traceback, and every `named` text in stderr."""
    assert outcome.code == code, outcome
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, outcome
    for text in named:
        assert str(text) in outcome.stderr, f"{text!r} not in the message\n{outcome}"


class Snapshot:
    """Every file under some roots, byte for byte (sha256), with its mode; `assert_unchanged()` compares."""

    def __init__(self, *roots: Path):
        self.roots = [Path(r) for r in roots]
        self.files = self._take()

    def _take(self) -> dict[str, tuple[str, int]]:
        found = {}
        for root in self.roots:
            paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in paths:
                found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
        return found

    def changes(self) -> dict[str, str]:
        """{path: 'changed' | 'lost' | 'new'} against the snapshot."""
        now = self._take()
        diff = {p: "lost" for p in self.files.keys() - now.keys()}
        diff.update({p: "new" for p in now.keys() - self.files.keys()})
        diff.update({p: "changed" for p in self.files.keys() & now.keys() if self.files[p] != now[p]})
        return diff

    def assert_unchanged(self, allow_new: bool = False) -> None:
        """Nothing the user had changed or was lost (and nothing new appeared unless `allow_new`)."""
        diff = {p: what for p, what in self.changes().items() if not (allow_new and what == "new")}
        assert not diff, diff


def interrupt_at(step: int):
    """A trainer callback that sends this process SIGINT at the end of `step`, as Ctrl-C would."""
    import signal

    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGINT)

    return Interrupt()
