"""The layering of runner/ (pyproject.toml [tool.importlinter]) holds, and the check fails on a back-edge."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_a_back_edge_breaks_the_layers(tmp_path):
    """plan importing the training code (a lower layer) is refused, naming the two modules."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "runner", copy / "runner")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    build = copy / "runner" / "plan" / "build.py"
    build.write_text(build.read_text() + "\nfrom runner.train import session  # noqa: E402,F401\n")
    result = lint(copy)
    assert result.returncode == 1
    assert "runner.plan is not allowed to import runner.train" in result.stdout
    assert "runner.plan.build -> runner.train.session" in result.stdout
