"""Task `reward` trains for real on the tiny Llama (TRL's RewardTrainer, a one-output score head): held-out pairwise
accuracy rises, every weight (or only the adapter and the head) changes, the head is saved with a LoRA adapter, and
`predict` prints the scores the evaluation computed; bad data stops the run before the model loads."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from assets import reverse_preference_rows
from commandline import cli
from conftest import ROOT, base_recipe, write_jsonl
from runner.commands.check_data import check_data
from runner.commands.inference import evaluate_run, predict
from runner.commands.run import prepare, run, train
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.train import models
from runner.train.reward import pair_scores


def reward_plan(tmp_path, recipe_file, shape=lambda rows: rows, fmt="preference", **sections):
    """The recipe's style preference (the answer as asked over the same answer in capitals), which a few steps teach;
    `shape` writes the rows in another format's shape."""
    write_jsonl(tmp_path / "train.jsonl", shape(reverse_preference_rows(256, seed=21)))
    write_jsonl(tmp_path / "eval.jsonl", shape(reverse_preference_rows(64, seed=22)))
    training = {"max_steps": 24, "learning_rate": 1e-3, "per_device_train_batch_size": 16,
                "per_device_eval_batch_size": 32, "max_length": 32, "logging_steps": 4, **sections.pop("training", {})}
    data = {"format": fmt, "train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}}
    recipe = base_recipe(tmp_path, task="reward", data=data, training=training, evaluation={"baseline": True},
                         **sections)
    return build_plan(load_recipe(recipe_file(recipe)))


def test_full_fine_tuning_ranks_held_out_pairs_and_changes_every_weight(tmp_path, recipe_file):
    plan = reward_plan(tmp_path, recipe_file)
    manifest = run(plan, argv=["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert before["pairs"] == after["pairs"] == 64
    assert after["pairwise_accuracy"] >= 0.9 and after["pairwise_accuracy"] > before["pairwise_accuracy"], \
        (before, after)  # chance is 0.5
    assert after["mean_margin"] > 1.0 > abs(before["mean_margin"])
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses  # from log 2 = 0.69
    saved = load_file(tmp_path / "run" / "model.safetensors")
    start = models.load_model(plan["model"], plan["recipe"]["training"]["seed"]).state_dict()
    assert saved["score.weight"].shape == (1, 128)  # one output
    assert all(not torch.equal(value, start[name]) for name, value in saved.items())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| pairwise_accuracy |" in report and "| mean_margin |" in report
    shown, shouted = predict(tmp_path / "run", ["reverse hello = olleh", "reverse hello = OLLEH"])
    assert shown["score"] > shouted["score"] and set(shown) == {"input", "score"}  # the saved full model


def test_lora_saves_the_head_and_predict_prints_the_scores_evaluation_computed(tmp_path, recipe_file):
    """fp32, so that `predict` (no autocast) and the trainer's evaluation compute the same numbers."""

    plan = reward_plan(tmp_path, recipe_file, peft={"method": "lora", "r": 8, "lora_alpha": 16},
                       training={"learning_rate": 5e-3, "bf16": False})
    prepared = prepare(plan)
    manifest = train(prepared.plan, prepared, ["test"])
    after = manifest["metrics"]["after"]
    assert after["pairwise_accuracy"] >= 0.9, manifest["metrics"]
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    head = [name for name in adapter if ".score." in name]
    assert head and any("lora_A" in name for name in adapter), sorted(adapter)  # the head trains in full beside it
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"] / 2

    rows = prepared.splits.evaluation.select(range(2))
    chosen, rejected = pair_scores(prepared.trainer, rows, prepared.plan)
    texts = [rows[i]["prompt"] + rows[i][side] for i in range(2) for side in ("chosen", "rejected")]
    result = cli("predict", str(tmp_path / "run"), *[arg for text in texts for arg in ("--text", text)])
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["input"] for p in printed] == texts
    expected = [chosen[0], rejected[0], chosen[1], rejected[1]]
    assert [p["score"] for p in printed] == pytest.approx(expected, abs=1e-4)
    assert printed[0]["score"] > printed[1]["score"] and printed[2]["score"] > printed[3]["score"]

    again = evaluate_run(plan, tmp_path / "run")["after"]  # `eval` loads the adapter and head back
    assert again["pairwise_accuracy"] == after["pairwise_accuracy"]
    assert again["mean_margin"] == pytest.approx(after["mean_margin"], abs=1e-4)


def test_sharegpt_pairs_train_as_conversations_through_the_chat_template(tmp_path, recipe_file):
    """LLaMA-Factory's preference shape: TRL renders the request and each answer with the tokenizer's chat template."""
    def sharegpt(rows):
        return [{"conversations": [{"from": "human", "value": r["prompt"]}],
                 "chosen": {"from": "gpt", "value": r["chosen"]}, "rejected": {"from": "gpt", "value": r["rejected"]}}
                for r in rows]

    plan = reward_plan(tmp_path, recipe_file, shape=sharegpt, fmt="sharegpt_preference", training={"max_steps": 16})
    prepared = prepare(plan)
    first = prepared.trainer.train_dataset[0]["chosen_ids"]
    assert prepared.trainer.processing_class.decode(first).startswith("<|user|>reverse ")  # the chat template's
    manifest = train(prepared.plan, prepared, ["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert manifest["data_shape"] == {"conversational": True} and after["pairs"] == 64
    assert after["pairwise_accuracy"] >= 0.9 and after["pairwise_accuracy"] > before["pairwise_accuracy"], \
        (before, after)


def test_a_pair_without_its_chosen_column_stops_before_the_model_loads(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "reverse ab =", "better": " ba", "rejected": " ab"}])
    path = recipe_file(base_recipe(tmp_path, task="reward"))
    result = cli(str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "/data/train: no column 'chosen' for field 'chosen' (format 'preference')" in result.stderr
    assert "columns: prompt, better, rejected" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing loaded, nothing written


def test_the_shipped_recipe_runs_cut_down(tmp_path):
    """recipes/reward_lora.json as a user runs it, a few steps: the summary shows pairwise accuracy before -> after."""
    result = cli("recipes/reward_lora.json", "--set", f"output.dir={tmp_path / 'rw'}", "--set", "training.max_steps=4",
                 "--set", "training.eval_strategy=no", "--set", "training.logging_steps=2", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairwise_accuracy: " in result.stdout and "pairs: 200 -> 200" in result.stdout, result.stdout
    assert (tmp_path / "rw" / "adapter_model.safetensors").is_file()


def test_the_data_check_says_over_long_pairs_are_left_out_not_truncated(tmp_path, recipe_file):
    """TRL's RewardTrainer filters a pair when either side is longer than max_length; it never cuts one. The check
    counts them, and refuses a run that would have nothing left to evaluate on."""
    # one token per byte + the end token: "reverse ab =" 12 + " ba" 3 + 1 = 16; "reverse abcdef =" 16 + 7 + 1 = 24
    short = {"prompt": "reverse ab =", "chosen": " ba", "rejected": " BA"}
    long = {"prompt": "reverse abcdef =", "chosen": " fedcba", "rejected": " FEDCBA"}
    other = {"prompt": "reverse xyzuvw =", "chosen": " wvuzyx", "rejected": " WVUZYX"}  # held out: no leakage
    write_jsonl(tmp_path / "train.jsonl", [short, long])
    write_jsonl(tmp_path / "eval.jsonl", [other, {**short, "prompt": "reverse cd =", "chosen": " dc"}, other])
    recipe = base_recipe(tmp_path, task="reward", data={"eval": {"path": "eval.jsonl"}}, training={"max_length": 20})
    report = check_data(build_plan(load_recipe(recipe_file(recipe))))
    assert report["truncated"] == 1 and report["over_length"] == "dropped" and report["loss_tokens"] is None
    assert report["eval_left_out"] == {"dropped": 2, "examples": 3}
    assert report["warnings"] == [
        "1 of the 2 training examples (50.0%) are longer than max_length 20 and will be left out by the trainer "
        "(TRL's RewardTrainer drops a pair when either side is longer; evaluation pairs too)",
        "2 of the 3 evaluation examples are longer than max_length 20 and will be left out: they are measured on "
        "the other 1"]
    assert report["preview"] == "reverse ab = ba<|end|>"  # every token is read: nothing shown as without loss
    write_jsonl(tmp_path / "eval.jsonl", [other, other])
    with pytest.raises(RecipeError) as info:
        check_data(build_plan(load_recipe(recipe_file(recipe))))
    (problem,) = info.value.problems
    assert problem.path == "/training/max_length"
    assert problem.message == ("all 2 evaluation examples measured are longer than max_length 20: the trainer would "
                               "leave every one out and have nothing to evaluate on")
