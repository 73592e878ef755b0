"""`check-data`: leakage, truncation with token statistics, the loss-mask preview; only a tokenizer loads."""
from __future__ import annotations

import subprocess
import sys

import pytest

from runner.plan.build import build_plan
from runner.commands.check_data import check_data
from runner.recipe.load import load_recipe
from conftest import ROOT, base_recipe, write_jsonl


def test_leakage_truncation_and_preview(tmp_path, recipe_file):
    train = [{"prompt": f"reverse {w} =", "completion": f" {w[::-1]}"} for w in ("abc", "hello", "zz", "qwerty")]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", [train[1], {"prompt": "reverse new =", "completion": " wen"}, train[3]])
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "eval": {"path": "eval.jsonl"}},
                         training={"max_length": 17})
    report = check_data(build_plan(load_recipe(recipe_file(recipe))))
    # one token per byte, plus the end token: "reverse zz =" 12 + " zz" 3 + 1 = 16; abc 13+4+1 = 18;
    # hello 15+6+1 = 22; qwerty 16+7+1 = 24
    assert report["token_lengths"] == {"min": 16, "median": 20, "p95": 24, "max": 24}
    assert report["truncated"] == 3
    # completions keep 4+1, 4 (of " cba" + end), 2 (of " olleh"), 1 (of " ytrewq") tokens within 17
    assert report["loss_tokens"] == {"all": 4 + 5 + 7 + 8, "kept": 4 + 4 + 2 + 1, "tokens": 80, "examples": 4,
                                     "emptied": 0, "emptied_rows": [], "dropped": 0, "dropped_rows": []}
    assert report["leakage"] == {"count": 2, "eval_rows": [1, 3], "train_rows": [2, 4]}
    assert report["preview"] == "⟦reverse abc =⟧ cba<|end|>"
    assert any("2 evaluation rows also appear in the training data" in w for w in report["warnings"])


def test_chat_preview_marks_only_assistant_turns(tmp_path, recipe_file):
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "yo"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    report = check_data(build_plan(load_recipe(recipe_file(base_recipe(tmp_path, data={"format": "messages"})))))
    assert report["preview"] == "⟦<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>⟧yo<|end|>"
    assert report["leakage"] is None and report["warnings"] == []


def test_check_data_command(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello"}, {"text": ""}])
    bad = subprocess.run([sys.executable, "-m", "runner", "check-data", str(recipe_file(base_recipe(tmp_path)))],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "1 rows are empty: rows 2 (column text)" in bad.stderr
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello"}, {"text": "world"}])
    good = subprocess.run([sys.executable, "-m", "runner", "check-data", str(recipe_file(base_recipe(tmp_path)))],
                          cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "training tokens per example: min 6, median 6.0, p95 6, max 6" in good.stdout
    assert "no warnings" in good.stdout


def test_a_run_reports_leakage_in_its_records(tmp_path, recipe_file):
    import json

    from runner.commands.run import run

    rows = [{"text": f"example number {i}"} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", rows[:3])
    recipe = base_recipe(tmp_path, data={"eval": {"path": "eval.jsonl"}})
    run(build_plan(load_recipe(recipe_file(recipe))), argv=["test"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["data_warnings"] == ["3 evaluation rows also appear in the training data (eval rows [1, 2, 3], "
                                       "train rows [1, 2, 3]): metrics on them are inflated"]
    assert "## Data warnings" in (tmp_path / "run" / "report.md").read_text()


def test_preflight_lengths_match_what_trl_builds(tmp_path, recipe_file):
    """For conversational prompt/completion, the counted tokens and the trained ones are TRL's own."""
    from runner.commands.run import prepare

    rows = [{"prompt": [{"role": "user", "content": f"reverse {w} ="}],
             "completion": [{"role": "assistant", "content": w[::-1]}]} for w in ("abc", "hello", "xy")]
    write_jsonl(tmp_path / "train.jsonl", rows)
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path, data={"format": "prompt_completion"}))))
    report = check_data(plan)
    trainer = prepare(plan).trainer
    trl_lengths = sorted(len(example["input_ids"]) for example in trainer.train_dataset)
    assert (report["token_lengths"]["min"], report["token_lengths"]["max"]) == (trl_lengths[0], trl_lengths[-1])
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
    trained = trainer.processing_class.decode(labels[labels != -100])
    assert report["preview"].endswith("⟧" + trained)


@pytest.mark.parametrize("strategy, truncated", [("bfd", 1), ("bfd_split", 0), ("wrapped", 0)])
def test_packing_truncates_each_example_only_with_bfd(tmp_path, recipe_file, strategy, truncated):
    """TRL's bfd keeps documents whole and truncates each to max_length; bfd_split and wrapped cut none off."""
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x" * 100}])
    recipe = base_recipe(tmp_path, training={"packing": True, "max_length": 16, "packing_strategy": strategy})
    assert check_data(build_plan(load_recipe(recipe_file(recipe))))["truncated"] == truncated


def test_batched_token_lengths_equal_the_row_by_row_encoding(tmp_path):
    """The batch path (plain strings) gives exactly encode()'s tokens and loss masks: text, prompt/completion,
    preference pairs, labelled text; conversations keep the row-by-row path."""
    from runner.data.check import encode, token_masks
    from conftest import TINY_MODEL

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    words = ["abc", "hello world", "", "x y z " * 7, tokenizer.eos_token]
    cases = [
        [{"text": w + " end"} for w in words],
        [{"text": w, "label": 1} for w in words],
        [{"prompt": f"reverse {w} =", "completion": w[::-1]} for w in words],
        [{"completion": w} for w in words if w],
        [{"prompt": f"q {w}", "chosen": w, "rejected": w * 3} for w in words],
        [{"messages": [{"role": "user", "content": w or "?"}, {"role": "assistant", "content": "ok"}]} for w in words],
    ]
    for config in ({"completion_only_loss": None}, {"completion_only_loss": False}):
        for rows in cases:
            assert token_masks(rows, tokenizer, config) == [encode(r, tokenizer, config)[1] for r in rows], rows[0]


def prompt_completion_rows(tmp_path, long_prompts: int, short: int = 20):
    """Rows whose prompts fill 40 tokens (the tiny tokenizer: one per byte) and rows of 12 + 3."""
    rows = [{"prompt": "p" * 40, "completion": " ab"}] * long_prompts + [{"prompt": "reverse ba =", "completion": " ab"}] * short
    write_jsonl(tmp_path / "train.jsonl", rows)


def test_truncation_that_cuts_away_many_answers_stops_before_the_model_loads(tmp_path, recipe_file):
    from runner.errors import RecipeError

    prompt_completion_rows(tmp_path, long_prompts=5)
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion"}, training={"max_length": 32})
    with pytest.raises(RecipeError) as info:
        check_data(build_plan(load_recipe(recipe_file(recipe))))
    (problem,) = info.value.problems
    assert problem.path == "/training/max_length"
    assert problem.message == ("5 of 25 examples measured (20%) would lose every token that carries loss to "
                               "truncation at max_length 32 (rows 1, 2, 3, 4, 5)")
    assert "raise training.max_length" in problem.hint


def test_a_few_answers_cut_away_are_named_in_a_warning(tmp_path, recipe_file):
    prompt_completion_rows(tmp_path, long_prompts=1)
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion"}, training={"max_length": 32})
    report = check_data(build_plan(load_recipe(recipe_file(recipe))))
    assert report["loss_tokens"]["dropped"] == 1
    assert ("1 of the 21 training examples will be dropped by the trainer: truncation at max_length 32 cuts away "
            "every token that carries loss (rows 1); it trains on the other 20") in report["warnings"]


def test_data_where_no_token_carries_loss_is_refused(tmp_path, recipe_file):
    from runner.errors import RecipeError

    prompt_completion_rows(tmp_path, long_prompts=3, short=0)
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion"}, training={"max_length": 32})
    with pytest.raises(RecipeError) as info:
        check_data(build_plan(load_recipe(recipe_file(recipe))))
    (problem,) = info.value.problems
    assert (problem.path, problem.message) == (
        "/data/train", "no token of the 3 examples measured carries loss once truncated to max_length 32: training "
                       "would learn nothing")


def test_check_data_shows_the_share_of_tokens_that_carry_loss(tmp_path, recipe_file):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = recipe_file(base_recipe(tmp_path, data={"format": "messages"}))
    out = subprocess.run([sys.executable, "-m", "runner", "check-data", str(recipe)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    # <|user|>hi<|end|><|assistant|>yo<|end|>: 8 tokens, of which "yo<|end|>" (3) carry loss
    assert ("tokens that carry loss: 3 of 8 (37.5%); examples truncated: 0; examples dropped (every loss token cut "
            "off): 0") in out.stdout
