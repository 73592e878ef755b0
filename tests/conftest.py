"""Shared fixtures and helpers for every tier. Everything is offline: tiny models from the shipped config, data written per test.

The tiers are folders: tests/quick (no torch, transformers, trl, peft or datasets: schema, recipe, plan, estimates,
rules; seconds), tests/tiny (tiny models built from configs, real trainer steps), tests/real (real pretrained
weights, marked `real`). This is the only conftest.py, so `from conftest import ...` means this file from every
tier; tests/ is on sys.path for the shared helpers (assets, faults, real_models, machines, commandline).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# Offline always: a Hub id must fail at once instead of retrying for ~46 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "recipes" / "assets" / "tiny-llama"
sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers: tests/assets.py, faults.py, ...

from real_models import minilm, shared_data, smollm2  # noqa: E402,F401  (fixtures of the real-weights tier)


@pytest.fixture(scope="session", autouse=True)
def _isolated_hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    os.environ["RECIPE_RUNNER_CACHE"] = str(home / "recipe-runner")  # the tokenization cache, never ~/.cache


# --- the quick tier: marked `quick`, and it fails if it imports a heavy library --------------------------------

QUICK = Path(__file__).parent / "quick"
HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


def heavy_loaded() -> list[str]:
    return [name for name in HEAVY if name in sys.modules]


def in_quick_tier(path) -> bool:
    return QUICK in Path(str(path)).parents


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if in_quick_tier(item.path):
            item.add_marker(pytest.mark.quick)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A quick test module that imports a heavy library (itself or through what it imports) is a collection error."""
    before = heavy_loaded()
    report = yield
    if isinstance(collector, pytest.Module) and in_quick_tier(collector.path) and report.passed:
        new = [name for name in heavy_loaded() if name not in before]
        if new:
            report.outcome = "failed"
            report.longrepr = (f"{collector.path}: importing this quick-tier module imported {', '.join(new)}; "
                               "the quick tier must not (move the test to tests/tiny, or import lazily in the runner)")
    return report


@pytest.fixture(autouse=True)
def _quick_tier_imports_no_heavy_library(request):
    """A quick test that imports a heavy library while it runs fails (where one was loaded before, by a module
    of another tier collected in the same session, this cannot tell; `pytest tests/quick` always can)."""
    if not in_quick_tier(request.node.path):
        yield
        return
    before = heavy_loaded()
    yield
    new = [name for name in heavy_loaded() if name not in before]
    if new:
        pytest.fail(f"{request.node.nodeid} imported {', '.join(new)}: the quick tier must not "
                    "(move the test to tests/tiny, or import lazily in the runner)", pytrace=False)


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_recipe(tmp_path: Path, **sections) -> dict:
    """A small valid recipe: the shipped tiny Llama, random init, data written by the caller."""
    recipe = {
        "name": "t",
        "model": {"name_or_path": str(TINY_MODEL), "init": "random"},
        "data": {"train": {"path": "train.jsonl"}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64,
                     "save_strategy": "no", "logging_steps": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def recipe_file(tmp_path):
    """write(recipe_dict) -> path of recipe.json in tmp_path."""
    def write(recipe: dict, name: str = "recipe.json") -> Path:
        return write_json(tmp_path / name, recipe)
    return write


def load_bench(name: str):
    """A script in bench/ as a module, for the helpers tests share with it (scripts run their work only as main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
