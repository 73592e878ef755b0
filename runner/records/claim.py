"""One owner per run directory: an atomic claim that a second run, or a resume, cannot take while the owner lives.

The claim is a file holding the owner's host, pid (with that pid's start time), Slurm job and a random nonce. It is
written complete under a temporary name and hard-linked into place: link(2) fails when the name exists, atomically
on local filesystems and on NFS (the method open(2) recommends there), so a claim is never seen half-written. Not
fcntl/flock: unreliable on the network filesystems clusters share run directories on.

A claim whose owner is gone (same host, pid not running or reused since; or the same Slurm job, requeued) is stale:
the next run renames it away and claims in its place. Renaming does not look at what it renames, so the taker
checks the nonce of what it moved and puts back a live claim that another run made in between. A claim from
another host cannot be checked from here: the message names its host and pid and how to release it.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from runner.errors import Problem, RecipeError

CLAIM = ".runner-claim"
_held: dict[Path, str] = {}  # run directory -> nonce of the claim this process holds there


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell the owner from a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if not owner:
        return False  # damaged (claims are written whole): there is no owner to wait for
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("slurm_job_id") == job:
        return False  # this very job, requeued after its node failed: the claim is its own earlier one
    if owner.get("host") != socket.gethostname():
        return True  # cannot be checked from here: assume it lives
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid: still compare start times below
        pass
    started = _process_start(pid)
    return started is None or owner.get("pid_started") in (None, started)


def _me(nonce: str) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _process_start(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "nonce": nonce,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read(path: Path) -> dict | None:
    """The claim's content; None when there is no claim; {} when it is unreadable (damaged: no owner to name)."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _create(path: Path, nonce: str) -> bool:
    """Put a complete claim at `path` unless one is there."""
    staged = path.with_name(f"{CLAIM}.{nonce}.tmp")
    staged.write_text(json.dumps(_me(nonce)))
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def claim(run_dir: Path) -> Path | None:
    """Own `run_dir`, creating it if missing. Returns the topmost directory this call created (None: it existed),
    for `release` to remove if the run never starts. Raises when a live process owns it. Owning it already (this
    process) is fine: a second prepare in one process re-claims."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    created = missing[-1] if missing else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _claim(run_dir)
        return created
    except OSError as exc:  # read-only filesystem, no permission, no space: before any model loads
        release(run_dir, created)
        raise RecipeError([Problem("/output/dir", f"cannot write in {run_dir}: {exc.strerror or exc}",
                                   "choose an output.dir on a writable filesystem where you may create files")]) \
            from None


def _claim(run_dir: Path) -> None:
    path, nonce = run_dir / CLAIM, _held.get(run_dir) or secrets.token_hex(8)
    for _ in range(5):  # each pass either claims, refuses, or removes one stale claim
        if _create(path, nonce):
            _held[run_dir] = nonce
            return
        owner = _read(path)
        if owner is None:
            continue
        if owner.get("nonce") == nonce:
            return  # ours already
        if _alive(owner):
            raise RecipeError([held_by(run_dir, owner)])
        _remove_stale(path, owner, nonce)
    raise RecipeError([Problem("/output/dir", f"could not claim {run_dir}: other runs keep claiming it",
                               "run one at a time in one output directory")])


def _remove_stale(path: Path, stale: dict, nonce: str) -> None:
    moved = path.with_name(f"{CLAIM}.stale-{nonce}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return  # another run removed it first
    taken = _read(moved) or {}
    if taken.get("nonce") != stale.get("nonce"):  # a live claim made after we looked: give it back
        try:
            os.link(moved, path)
        except FileExistsError:
            moved.unlink(missing_ok=True)
            raise RecipeError([held_by(path.parent, taken)]) from None
    moved.unlink(missing_ok=True)


def held_by(run_dir: Path, owner: dict) -> Problem:
    who = f"process {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
    return Problem("/output/dir", f"{run_dir} is in use by another run: {who}",
                   "wait for it to end, or choose another output.dir; if that process is gone (e.g. its machine "
                   f"crashed), delete {run_dir / CLAIM}")


def still_held(run_dir: Path) -> bool:
    owner = _read(run_dir / CLAIM)
    return bool(owner) and owner.get("nonce") == _held.get(run_dir)


def release(run_dir: Path, created: Path | None = None) -> None:
    """Give the directory up (only our own claim). `created`: what `claim` created, removed again while empty
    (a run refused before it started leaves nothing behind)."""
    if still_held(run_dir):
        (run_dir / CLAIM).unlink(missing_ok=True)
    _held.pop(run_dir, None)
    if created is None:
        return
    for folder in (run_dir, *run_dir.parents):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        if folder == created:
            return
