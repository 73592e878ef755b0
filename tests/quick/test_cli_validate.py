"""The command line as a user meets it, for the commands that load no model: validate and plan (exit codes, reports
without tracebacks). Each runs `python -m runner` in a fresh process, which imports no heavy library for these."""
from __future__ import annotations

import json

import pytest

from commandline import cli
from conftest import ROOT, base_recipe


def test_validate_every_shipped_recipe():
    recipes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.json"))
    result = cli("validate", *recipes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ok: {r}" for r in recipes]


def test_user_mistakes_exit_2_with_one_report_and_no_traceback(tmp_path, recipe_file):
    path = recipe_file(base_recipe(tmp_path, training={"learnig_rate": 1e-4, "max_steps": "ten"}))
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: 2 problems",
        "  /training/learnig_rate: unknown key",
        "      hint: did you mean 'learning_rate'?",
        "  /training/max_steps: 'ten' is not an integer",
    ]


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_every_command_reports_bad_set_the_same_way(tmp_path, recipe_file, command):
    path = recipe_file(base_recipe(tmp_path))
    result = cli(command, str(path), "--set", "trainig.seed=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/trainig: unknown key (in --set 'trainig.seed=1')" in result.stderr
    assert "did you mean 'training'?" in result.stderr


def test_plan_prints_json():
    result = cli("plan", "recipes/quickstart.json", "--set", "training.learning_rate=1e-3")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["trainer"]["config"]["learning_rate"] == 1e-3
