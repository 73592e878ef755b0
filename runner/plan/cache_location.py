"""Where the tokenization cache lives (runner/data/tokencache.py keeps it), and the plan's check of that place."""
from __future__ import annotations

import os
from pathlib import Path

from runner.errors import Problem
from runner.recipe.sources import local_files

ENV = "RECIPE_RUNNER_CACHE"


def cache_root(setting) -> Path | None:
    """Where entries live: the recipe's data.tokenization_cache, false for none, null for the default."""
    if setting is False:
        return None
    if isinstance(setting, str):
        return Path(setting).expanduser().absolute()
    base = os.environ.get(ENV) or str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "recipe-runner")
    return Path(base).expanduser().absolute() / "tokenized"


def check_location(doc: dict, output_dir: str | None = None) -> list:
    """The cache is never put among the user's data files (the plan reports it at data.tokenization_cache)."""
    root = cache_root(doc["data"].get("tokenization_cache"))
    folders = {Path(path).absolute().parent for path in local_files(doc)}
    within = lambda folder: root == folder or folder in root.parents  # noqa: E731
    hint = "choose a directory of its own, e.g. ~/.cache/recipe-runner/tokenized (the default: null)"
    if root is None:
        return []
    if output_dir is not None and within(Path(output_dir).absolute()):  # its entries would be foreign files there
        return [Problem("/data/tokenization_cache", f"{root} is inside the run directory {output_dir}", hint)]
    if not any(within(folder) for folder in folders):
        return []
    return [Problem("/data/tokenization_cache", f"{root} is inside the data's directory", hint)]
