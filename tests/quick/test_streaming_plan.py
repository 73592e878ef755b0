"""Streamed sources in the plan: what a stream cannot give (a length, a split, a whole pass) is asked for or refused
before anything loads, at the key to change."""
from __future__ import annotations

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

ROWS = [{"text": f"row {i}"} for i in range(8)]


def problems_of(tmp_path, **sections) -> list[tuple[str, str]]:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = base_recipe(tmp_path, **sections)
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    return [(p.path, p.message) for p in info.value.problems]


def test_a_streamed_training_source_needs_max_steps_and_cannot_be_split(tmp_path):
    found = problems_of(tmp_path, data={"train": {"path": "train.jsonl", "streaming": True}, "eval_fraction": 0.2},
                        training={"max_steps": -1, "num_train_epochs": 1})
    assert sorted(found) == [
        ("/data/eval_fraction", "cannot split rows off /data/train, which is streamed"),
        ("/training/max_steps", "/data/train is streamed: its length, and so an epoch's steps, is not known"),
    ]


def test_streamed_evaluation_data_needs_a_limit(tmp_path):
    found = problems_of(tmp_path, data={"train": {"path": "train.jsonl"}, "eval": [
        {"path": "train.jsonl", "streaming": True}, {"path": "train.jsonl", "name": "b", "streaming": True,
                                                     "limit": 4}]})
    assert found == [("/data/eval/0/limit", "a streamed evaluation source is read whole, every evaluation: it needs "
                                            "a limit")]


def test_a_task_that_reads_its_whole_training_data_first_cannot_stream(tmp_path):
    write_jsonl(tmp_path / "labelled.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    found = problems_of(tmp_path, task="classification", data={"train": {"path": "labelled.jsonl", "streaming": True}})
    assert found == [("/data/train/streaming", "task 'classification' cannot stream its training data: it reads the "
                                               "label set and class weights from the whole training data first")]


def test_precomputed_reference_log_probs_cannot_stream(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    found = problems_of(tmp_path, task="dpo", data={"train": {"path": "pairs.jsonl", "streaming": True}},
                        training={"max_steps": 2, "precompute_ref_log_probs": True})
    assert ("/training/precompute_ref_log_probs", "reads the whole training data before training; /data/train is "
                                                  "streamed") in found


def test_a_stream_in_a_mixture_makes_its_size_unknown(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = base_recipe(tmp_path, data={"train": [{"path": "train.jsonl", "streaming": True},
                                                   {"path": "train.jsonl", "name": "whole"}],
                                         "mixture": {"strategy": "concatenate"}})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert plan["data"]["mixture"]["sources"]["train"] == {"rows": None, "share": None}
    assert plan["data"]["mixture"]["expected_rows"] is None
    assert plan["batch"]["steps_per_epoch_unknown"] == "streamed: its size is known only once it has been read"
