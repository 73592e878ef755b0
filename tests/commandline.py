"""The command line in a fresh process, as a user runs it (shared by the quick and tiny tiers)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nobody listens on, so a leftover process on accelerate's default port cannot capture the run."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(*args, cwd=ROOT, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def slurm_script(tmp_path: Path, *extra) -> Path:
    """`slurm` for tmp_path/recipe.json on 2 nodes x 1 GPU; the script it wrote."""
    script = tmp_path / "job.sbatch"
    result = cli("slurm", str(tmp_path / "recipe.json"), "--nodes", "2", "--gpus-per-node", "1",
                 "--logs", str(tmp_path / "logs"), "-o", str(script), *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return script
