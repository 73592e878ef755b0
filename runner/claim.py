"""One owner per run directory: an atomic claim that a second run, or a resume, cannot take while the owner lives.

The claim is a file made with O_CREAT|O_EXCL (atomic on local filesystems and on NFSv3+), holding the owner's
host, pid and the start time of that pid. Not fcntl/flock: those are unreliable on the network filesystems
clusters share run directories on, and die with no trace. A claim whose owner is gone (same host, pid not
running or reused since) is stale: the next run takes it over, by renaming it away first so that two runs
finding the same stale claim cannot both win. A claim from another host cannot be checked from here; the
message says which host and pid hold it and how to release it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import Problem, RecipeError

CLAIM = ".runner-claim"
WRITING_S = 1.0  # a claim unreadable for longer than this was left half-written by a process that died


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell the owner from a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if not owner:
        return False  # unreadable for longer than a claim takes to write: its writer died while claiming
    if owner.get("host") != socket.gethostname():
        return True  # cannot be checked from here: assume it lives
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    started = _process_start(pid)
    return started is None or owner.get("pid_started") in (None, started)


def me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _process_start(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a process that died while claiming: no live owner to name
    return owner if isinstance(owner, dict) else {}


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(me(), handle)
    return True


def claim(run_dir: Path) -> Path | None:
    """Own `run_dir`, creating it if missing. Returns the topmost directory this call created (None: it existed),
    for `release` to remove if the run never starts. Raises when a live process owns it. Owning it already (same
    process) is fine: a second prepare in one process re-claims."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    created = missing[-1] if missing else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return _claim(run_dir, created)
    except OSError as exc:  # read-only filesystem, no permission, a file in the way: before any model loads
        release(run_dir, created)
        raise RecipeError([Problem("/output/dir", f"cannot write in {run_dir}: {exc.strerror or exc}",
                                   "choose an output.dir on a writable filesystem where you may create files")]) \
            from None


def _claim(run_dir: Path, created: Path | None) -> Path | None:
    path = run_dir / CLAIM
    for _ in range(5):  # a stale claim renamed away by another run in between: look again
        if _create(path):
            return created
        owner = _read(path)
        if owner is None:
            continue
        if not owner and _age(path) < WRITING_S:  # being written this instant by a run that just claimed
            time.sleep(WRITING_S)
            continue
        if owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
            return created
        if _alive(owner):
            raise RecipeError([held_by(run_dir, owner)])
        stale = path.with_name(f"{CLAIM}.stale-{os.getpid()}")
        try:
            os.rename(path, stale)  # only one of several runs finding it stale succeeds
            stale.unlink()
        except FileNotFoundError:
            pass
    raise RecipeError([Problem("/output/dir", f"could not claim {run_dir}: other runs keep claiming it",
                               "run one at a time in one output directory")])


def held_by(run_dir: Path, owner: dict) -> Problem:
    who = f"process {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
    return Problem("/output/dir", f"{run_dir} is in use by another run: {who}",
                   "wait for it to end, or choose another output.dir; if that process is gone (e.g. its machine "
                   f"crashed), delete {run_dir / CLAIM}")


def release(run_dir: Path, created: Path | None = None) -> None:
    """Give the directory up (only our own claim). `created`: what `claim` created, removed again while empty
    (a run refused before it started leaves nothing behind)."""
    path = run_dir / CLAIM
    owner = _read(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
    if created is None:
        return
    for folder in (run_dir, *run_dir.parents):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        if folder == created:
            return
