"""Streamed sources: the trainer reads rows as it goes, its first rows are checked before the model loads, a bad
later row stops the run with its row number and keeps the checkpoints, and a stream mixes with loaded sources."""
from __future__ import annotations

import json

import pytest
from conftest import base_recipe, write_json, write_jsonl
from runner.commands.run import run
from runner.data import streaming
from runner.data.load import load_all
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.train import session

ROWS = [{"instruction": f"Reverse {w}", "input": "", "output": w[::-1]}
        for w in ["abc", "hello", "world", "stream", "token", "mixture", "rows", "cat"] * 6]


def plan_for(tmp_path, train, **sections):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = base_recipe(tmp_path, data={"format": "alpaca", "train": train, **sections.pop("data", {})}, **sections)
    return build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))


def test_a_streamed_source_trains_the_model(tmp_path):
    plan = plan_for(tmp_path, {"path": "train.jsonl", "streaming": True},
                    training={"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
                              "save_strategy": "no", "logging_steps": 1})
    splits, _ = load_all(plan)
    assert streaming.is_stream(splits.train)
    assert next(iter(splits.train)) == {"messages": [{"role": "user", "content": "Reverse abc"},
                                                     {"role": "assistant", "content": "cba"}]}
    manifest = run(plan, argv=["test"])
    assert manifest["status"] == "finished" and manifest["examples"]["train"] is None  # a stream's size is unknown
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]  # 4 steps of the stream, at a high learning rate
    assert "- train: `" + str(tmp_path / "train.jsonl") + "`, streamed" in (tmp_path / "run" / "README.md").read_text()


def test_the_first_rows_of_a_stream_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    rows = ROWS[:5] + [{"instruction": "", "input": "", "output": "x"}] + ROWS[5:]
    plan = plan_for(tmp_path, {"path": "train.jsonl", "streaming": True})
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(RecipeError) as info:
        load_all(plan)
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/data/train", f"1 rows are empty: rows 6 (column instruction) in {tmp_path / 'train.jsonl'}")]


def test_a_bad_row_later_in_the_stream_stops_the_run_with_its_number_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "HEAD_ROWS", 8)  # rows checked at load; the run's data check measures as many
    monkeypatch.setattr(session, "DATA_CHECK_SAMPLE", 8)
    rows = [dict(row) for row in ROWS]
    rows[29]["output"] = "   "  # row 30: read in step 8 of batches of 4
    plan = plan_for(tmp_path, {"path": "train.jsonl", "streaming": True},
                    training={"max_steps": 12, "per_device_train_batch_size": 4, "save_strategy": "steps",
                              "save_steps": 4, "logging_steps": 1})
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/data/train", f"1 rows are empty (streamed): rows 30 (column output) in {tmp_path / 'train.jsonl'}")]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "rows 30 (column output)" in record["error"]
    assert (tmp_path / "run" / "checkpoint-4" / "model.safetensors").is_file()  # resumable once the row is fixed


def test_a_stream_mixes_with_a_loaded_source_and_check_data_measures_its_first_rows(tmp_path):
    from runner.commands.check_data import check_data
    from runner.data.check import render

    write_jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"from": "human", "value": f"Say {i}."},
                                                             {"from": "gpt", "value": f"{i}"}]} for i in range(20)])
    plan = plan_for(tmp_path, [{"path": "train.jsonl", "streaming": True}, {"path": "chat.jsonl", "format": "sharegpt"}])
    splits, _ = load_all(plan)
    assert streaming.is_stream(splits.train) and splits.drawn is None
    drawn = [row["messages"][-1]["content"] for row in splits.train]
    assert {answer for answer in drawn if answer.isdigit()} == {str(i) for i in range(20)}  # first_exhausted: all of chat
    report = check_data(plan)
    assert report["examples"]["train"] is None and report["streamed"]
    assert report["sources"]["train"]["rows"] is None and report["sources"]["chat"]["rows"] == 20
    text = render(report)
    assert "examples: train (streamed)" in text and "  train: streamed (what it gives is known" in text


def test_a_streamed_conversation_is_masked_as_a_loaded_one(tmp_path):
    """The runner masks assistant turns itself (any chat template): a streamed source gets the same token ids and
    loss mask, row by row as it streams, as the same file loaded whole."""
    from runner.commands.run import prepare

    def first_example(streamed: bool, where):
        where.mkdir()
        plan = plan_for(where, {"path": "train.jsonl", "streaming": streamed},
                        training={"max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no"})
        prepared = prepare(plan)
        return next(iter(prepared.trainer.train_dataset))

    loaded, streamed = first_example(False, tmp_path / "loaded"), first_example(True, tmp_path / "streamed")
    assert streamed["input_ids"] == loaded["input_ids"]
    assert streamed["labels"] == loaded["labels"]  # TRL's labels from the runner's assistant mask
    trained = [label for label in loaded["labels"] if label != -100]
    assert 0 < len(trained) < len(loaded["labels"])  # the answer only
