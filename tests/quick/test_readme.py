"""The README is the front door: its commands must be the ones CI runs and the files must exist."""
from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_what_ci_runs():
    test_command = next(b.strip() for b in bash_blocks() if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_quickstart_command_runs_the_quickstart_recipe():
    quickstart = bash_blocks()[0].strip()
    assert quickstart.endswith(".venv/bin/python -m runner recipes/quickstart.json")
    assert "-c constraints.txt" in quickstart and "torch==2.13.0" in quickstart


def test_files_the_readme_names_exist():
    for path in re.findall(r"(?:recipes|accelerate_configs|docs|schemas)/[\w./-]+\.(?:json|yaml|md)", README):
        assert (ROOT / path).is_file(), path
