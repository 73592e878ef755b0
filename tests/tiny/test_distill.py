"""On-policy distillation (TRL's DistillationTrainer): a student generates completions from the prompts and learns
the teacher's next-token distributions on them; the divergence falls. The teacher is named in the recipe and checked
before anything loads."""
from __future__ import annotations

import pytest

from conftest import ROOT, base_recipe, write_json, write_jsonl
from runner.commands.run import run
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

PROMPTS = str(ROOT / "recipes" / "assets" / "reverse" / "train.jsonl")


def teacher_dir(tmp_path):
    """The tiny Llama with other random weights than the student's (seed 1), saved as a model directory."""
    from runner.train.models import load_model, load_tokenizer

    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    spec = build_plan(load_recipe(write_json(tmp_path / "base.json", base_recipe(tmp_path))))["model"]
    folder = tmp_path / "teacher"
    load_model(spec, 1).save_pretrained(folder)
    load_tokenizer(spec).save_pretrained(folder)
    return folder


def distill_recipe(tmp_path, teacher, **training):
    recipe = base_recipe(tmp_path, task="distill", data={"train": {"path": PROMPTS, "limit": 64}})
    recipe["training"] = {"max_steps": 12, "per_device_train_batch_size": 8, "max_completion_length": 8,
                          "learning_rate": 5e-3, "logging_steps": 3, "save_strategy": "no",
                          "teacher_model_name_or_path": str(teacher), **training}
    return write_json(tmp_path / "recipe.json", recipe)


def test_the_student_moves_towards_the_teacher(tmp_path):
    manifest = run(build_plan(load_recipe(distill_recipe(tmp_path, teacher_dir(tmp_path)))), argv=["test"])
    losses = [entry["loss"] for entry in manifest["history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses  # measured 0.047 -> 0.012


def test_a_teacher_that_is_not_a_model_is_refused_before_anything_loads(tmp_path):
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p"}])
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(distill_recipe(tmp_path, tmp_path / "empty")))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/training/teacher_model_name_or_path", f"{tmp_path / 'empty'} holds no model (no config.json)")]
