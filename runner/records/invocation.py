"""How a run was started, and the command line that continues it.

run.json keeps the command (argv), the directory it ran in and `resume_command`: the same command with --resume,
which the interrupted run also prints. A user pastes it from anywhere: it changes to the directory the run
started in (relative paths in the recipe path, --set values and the default output.dir are relative to it).
"""
from __future__ import annotations

import json
import os
import shlex
import sys

RESUME_FLAGS = ("--overwrite", "--resume")
LAUNCHED_BY = "RUNNER_LAUNCH_ARGV"  # set by `python -m runner launch` for the processes it starts


def resume_command(argv: list[str], cwd: str, world_size: int, recipe_file: str) -> str:
    """The command that continues this run: its own arguments (every --set kept; --overwrite and if_exists
    overrides dropped) plus --resume. Under `python -m runner launch` that launch command; under a plain
    `accelerate launch` (whose options the processes cannot see) one with the same number of processes."""
    launched = os.environ.get(LAUNCHED_BY)
    if launched:
        return _with_resume(json.loads(launched), cwd)
    args = list(argv[1:])
    if args[:1] == ["run"]:
        args = args[1:]
    if not any(not a.startswith("-") for a in _without_values(args)):
        args.insert(0, recipe_file)  # not started from the command line (a notebook, a test): the recipe it planned
    launcher = [sys.executable, "-m", "runner"] if world_size <= 1 else \
        ["accelerate", "launch", "--num_processes", str(world_size), "-m", "runner"]
    return _with_resume(launcher + args, cwd)


def _with_resume(command: list[str], cwd: str) -> str:
    kept, i = [], 0
    while i < len(command):
        arg = command[i]
        if arg == "--set" and i + 1 < len(command):
            if not command[i + 1].startswith("output.if_exists="):
                kept += command[i:i + 2]
            i += 2
            continue
        if not (arg in RESUME_FLAGS or arg.startswith("--set=output.if_exists=")):
            kept.append(arg)
        i += 1
    return f"cd {shlex.quote(cwd)} && {shlex.join(kept + ['--resume'])}"


def _without_values(args: list[str]) -> list[str]:
    """The arguments with each --set's value left out (a value is never the recipe)."""
    return [a for i, a in enumerate(args) if not (i > 0 and args[i - 1] == "--set")]
