"""Real datasets whose columns are not a format's, read through data.templates with no converter: SciTLDR (an
abstract as a list of sentences, several reference TLDRs) and WMT22 de-en (nested translation pairs)."""
from __future__ import annotations

import json

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.data.load import load_all
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe


def splits_of(tmp_path, train: str, field_templates: dict):
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": train},
                                         "templates": field_templates})
    splits, _ = load_all(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))))
    return splits


def test_scitldr_abstracts_and_first_references_become_prompt_completion_pairs(tmp_path, shared_data):
    path = shared_data / "summ_scitldr" / "dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    splits = splits_of(tmp_path, str(path), {"prompt": "Summarize: {source}\nTLDR:", "completion": " {target[0]}"})
    assert len(splits.train) == len(rows) == 619
    assert splits.train[0] == {"prompt": "Summarize: " + " ".join(rows[0]["source"]) + "\nTLDR:",
                               "completion": " " + rows[0]["target"][0]}
    assert splits.train.column_names == ["prompt", "completion"]


def test_wmt22_translation_pairs_become_prompt_completion_pairs(tmp_path, shared_data):
    path = shared_data / "mt_wmt22_deen" / "valid.de-en.json"
    rows = json.loads(path.read_text())
    splits = splits_of(tmp_path, str(path), {"prompt": "German: {translation.de}\nEnglish:",
                                            "completion": " {translation.en}"})
    assert len(splits.train) == len(rows)
    assert splits.train[-1] == {"prompt": f"German: {rows[-1]['translation']['de']}\nEnglish:",
                                "completion": " " + rows[-1]["translation"]["en"]}


def test_rows_a_template_cannot_fill_are_reported_by_number_before_conversion(tmp_path):
    rows = [{"source": ["a."], "target": ["t"]}, {"source": ["b."], "target": []}, {"source": ["c."]},
            {"source": ["d."], "target": []}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(RecipeError) as info:
        splits_of(tmp_path, "train.jsonl", {"prompt": "{source}", "completion": "{target[0]}"})
    name = str(tmp_path / "train.jsonl")
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/data/templates/completion", f"2 rows of {name} (/data/train) cannot fill it: {{target[0]}}: no item 0 "
                                       "(the value there is a list of 0 items): rows 2, 4"),
        ("/data/templates/completion", f"1 rows of {name} (/data/train) cannot fill it: {{target[0]}}: no field "
                                       "'target' (fields there: source): rows 3"),
    ]


def test_every_reference_of_a_scitldr_paper_counts_in_a_runs_metrics(tmp_path, recipe_file, shared_data,
                                                                      monkeypatch):
    """Answers equal to each paper's last reviewer TLDR: exact match 1.0 against all references (evaluation.references),
    where the format's one reference (the author's TLDR, target[0]) would give 0 for every paper with several."""
    from runner.commands.run import run
    from runner.evaluate import generation

    dev = shared_data / "summ_scitldr" / "dev.jsonl"
    rows = [json.loads(line) for line in dev.read_text().splitlines()[:6]]
    assert sum(len(r["target"]) > 1 for r in rows) >= 3
    answers = [r["target"][-1] for r in rows]
    monkeypatch.setattr(generation, "generate", lambda model, tokenizer, prompts, settings: answers[:len(prompts)])
    recipe = base_recipe(
        tmp_path,
        data={"format": "prompt_completion", "train": {"path": str(dev), "limit": 4},
              "eval": {"path": str(dev), "limit": 6},
              "templates": {"prompt": "{title}:", "completion": " {target[0]}"}},
        training={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 128},
        evaluation={"metrics": ["exact_match", "rouge", "bleu"], "references": "target"})
    after = run(build_plan(load_recipe(recipe_file(recipe))), argv=["test"])["metrics"]["after"]
    assert after["exact_match"] == 1.0 and after["rouge1"] == 1.0 and after["bleu"] == pytest.approx(100.0)
