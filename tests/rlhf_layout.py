"""The RLHF chain's recipes (recipes/rlhf/) copied byte for byte into a layout like the repository's, so that their
relative paths (the assets, and ../../runs/<step>: the run directory each step writes, relative to the working
directory) resolve inside a test's temporary directory."""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def laid_out(tmp_path: Path) -> Path:
    """tmp_path/recipes/rlhf holding the chain's recipes, beside the shipped assets; returns that directory."""
    recipes = tmp_path / "recipes"
    (recipes / "rlhf").mkdir(parents=True)
    for path in (ROOT / "recipes" / "rlhf").glob("*.json"):
        shutil.copyfile(path, recipes / "rlhf" / path.name)
    (recipes / "assets").symlink_to(ROOT / "recipes" / "assets")
    return recipes / "rlhf"
