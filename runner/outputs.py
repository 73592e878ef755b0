"""The run directory: refusing to clobber, atomic records, the run.json manifest.

Only the main process calls the writing functions. Records are written to a temporary file and
renamed into place, so a crash never leaves a half-written run.json.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .errors import Problem, RecipeError
from .secrets import redact

MANIFEST = "run.json"
REPLACED = ".replaced-"  # an earlier run being replaced, kept until the new one succeeds
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "jsonschema")


def check_run_dir(output_dir: str, if_exists: str) -> None:
    """Raise before anything is loaded if starting here would destroy something."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise RecipeError([Problem("/output/dir", f"{path} exists and is not a directory")])
    if not path.is_dir() or not any(path.iterdir()):
        return
    if if_exists == "error":
        raise RecipeError([Problem("/output/dir", f"{path} already holds files",
                                   "choose another output.dir, pass --overwrite to replace the earlier run, or "
                                   "--resume to continue it from its newest checkpoint")])
    if not (path / MANIFEST).is_file():
        raise RecipeError([Problem("/output/dir", f"{path} is not empty and holds no {MANIFEST}; refusing to "
                                                  f"{if_exists} in a directory the runner did not create",
                                   "choose another output.dir")])


def start_run_dir(output_dir: str) -> Path | None:
    """Create the run directory. An earlier run there is moved into a hidden folder inside it and deleted
    only once this run succeeds; nothing is written outside the run directory."""
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    earlier = [p for p in path.iterdir() if not p.name.startswith(REPLACED)]
    if not earlier:
        return None
    moved = path / f"{REPLACED}{int(time.time() * 1000)}"
    moved.mkdir()
    for entry in earlier:
        entry.rename(moved / entry.name)
    return moved


def finish_replacing(run_dir: Path) -> None:
    """The run finished: earlier runs it replaced (an interrupted overwrite's too) can go."""
    for moved in run_dir.glob(f"{REPLACED}*"):
        shutil.rmtree(moved, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temporary file in the same directory, then rename), secrets masked."""
    obj = redact(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, default=str)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; records are as readable as any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    found = {"python": sys.version.split()[0]}
    for name in ("recipe-runner",) + LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware() -> dict:
    """What this process can see. bf16: whether the device that trains (the GPU, else the CPU) computes bf16
    natively, which `training.bf16: null` follows (runner/fast.py); cpu_bf16: the CPU flag that said so."""
    import torch

    from . import cpu

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    cpu_bf16 = cpu.probe()
    return {
        "platform": platform.platform(),
        # the CPUs this process may use (Slurm and cgroups restrict the affinity), not the machine's total
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpus,
        "bf16": bool(torch.cuda.is_bf16_supported()) if cuda else cpu_bf16["native"],
        "cpu_bf16": cpu_bf16,
    }


def new_manifest(plan: dict, hw: dict, argv: list[str]) -> dict:
    return {
        "name": plan["recipe"]["name"],
        "status": "running",
        "started_at": now(),
        "finished_at": None,
        "command": argv,
        "recipe_file": plan["recipe_file"],
        "output_dir": plan["output_dir"],
        "versions": versions(),
        "hardware": hw,
        "parameters": None,
        "metrics": {},
        "history": [],
    }
