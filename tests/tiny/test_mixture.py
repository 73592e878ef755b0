"""Mixtures as the trainer gets them: every row traced to its source, draws seeded and reproducible, shares as the
weights say, stopping strategies as `datasets` defines them, sources of different formats and Arrow types in one
dataset; check-data's per-source report and a run's per-source evaluation."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.data.load import load_all
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

ALPACA = [{"instruction": f"Say a{i}.", "input": "", "output": f"a{i}"} for i in range(300)]
SHAREGPT = [{"conversations": [{"from": "human", "value": f"Say s{i}."}, {"from": "gpt", "value": f"s{i}"}]}
            for i in range(100)]
# OpenAI-style turns carrying a key the converted sources lack (`name`): the Arrow types differ
MESSAGES = [{"messages": [{"role": "user", "content": f"Say m{i}.", "name": "u"},
                          {"role": "assistant", "content": f"m{i}", "name": None}]} for i in range(50)]


def write_sources(tmp_path):
    write_json(tmp_path / "alpaca.json", ALPACA)
    write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT)
    write_jsonl(tmp_path / "messages.jsonl", MESSAGES)


def mixture_plan(tmp_path, train: list, mixture: dict | None = None, **sections) -> dict:
    write_sources(tmp_path)
    recipe = base_recipe(tmp_path, data={"format": "alpaca", "train": train, "mixture": mixture or {}}, **sections)
    return build_plan(load_recipe(write_json(tmp_path / f"recipe-{len(list(tmp_path.iterdir()))}.json", recipe)))


THREE = [{"path": "alpaca.json", "weight": 2}, {"path": "sharegpt.jsonl", "format": "sharegpt"},
         {"path": "messages.jsonl", "format": "messages"}]


def answers(dataset) -> list[str]:
    """Each row's answer (a0, s7, m3): its first letter names the source, the rest the row."""
    return [row["messages"][-1]["content"] for row in dataset]


def test_every_row_comes_from_its_source_and_the_counts_are_exact(tmp_path):
    splits, _ = load_all(mixture_plan(tmp_path, THREE))
    drawn = Counter(answer[0] for answer in answers(splits.train))
    assert splits.drawn == {"alpaca": drawn["a"], "sharegpt": drawn["s"], "messages": drawn["m"]}
    assert sum(splits.drawn.values()) == len(splits.train)
    # first_exhausted: it ends when a source runs out, so no row is repeated and one source gave all its rows
    assert len(set(answers(splits.train))) == len(splits.train)
    assert drawn["m"] == 50 or drawn["s"] == 100 or drawn["a"] == 300
    assert set(splits.train_sources) == {"alpaca", "sharegpt", "messages"}


def test_seeded_draws_repeat_exactly_and_another_seed_draws_another_mixture(tmp_path):
    first = answers(load_all(mixture_plan(tmp_path, THREE))[0].train)
    again = answers(load_all(mixture_plan(tmp_path, THREE))[0].train)
    other = answers(load_all(mixture_plan(tmp_path, THREE, {"seed": 7}))[0].train)
    assert first == again and first != other


def test_shares_follow_the_weights_within_sampling_error(tmp_path):
    """all_exhausted draws until the smallest source (messages, 1/4 of the draws) has run out once: ~200 draws of
    which alpaca's share is 1/2; each share lies within 4 standard deviations of its weight's."""
    splits, _ = load_all(mixture_plan(tmp_path, THREE, {"stopping_strategy": "all_exhausted"}))
    total = len(splits.train)
    for name, weight in (("alpaca", 0.5), ("sharegpt", 0.25), ("messages", 0.25)):
        spread = 4 * math.sqrt(weight * (1 - weight) / total)
        assert abs(splits.drawn[name] / total - weight) < spread, (name, splits.drawn, total)
    # every source was used whole at least once; the lighter ones start over
    seen = set(answers(splits.train))
    assert {f"m{i}" for i in range(50)} <= seen and {f"s{i}" for i in range(100)} <= seen


def test_without_replacement_uses_every_row_exactly_once(tmp_path):
    splits, _ = load_all(mixture_plan(tmp_path, THREE, {"stopping_strategy": "all_exhausted_without_replacement"}))
    assert sorted(answers(splits.train)) == sorted([f"a{i}" for i in range(300)] + [f"s{i}" for i in range(100)]
                                                   + [f"m{i}" for i in range(50)])
    assert splits.drawn == {"alpaca": 300, "sharegpt": 100, "messages": 50}


def test_concatenation_keeps_every_row_in_source_order(tmp_path):
    train = [{"path": "sharegpt.jsonl", "format": "sharegpt", "limit": 3}, {"path": "messages.jsonl",
                                                                          "format": "messages", "limit": 2}]
    splits, _ = load_all(mixture_plan(tmp_path, train, {"strategy": "concatenate"}))
    assert answers(splits.train) == ["s0", "s1", "s2", "m0", "m1"]
    # the turns of every source carry the union of their keys, a missing one null (as datasets reads such a file)
    assert splits.train[0]["messages"][0] == {"role": "user", "content": "Say s0.", "name": None}
    assert splits.train[3]["messages"][0] == {"role": "user", "content": "Say m0.", "name": "u"}


def test_sources_the_trainer_cannot_hold_together_are_refused_at_their_path(tmp_path):
    from runner.errors import RecipeError

    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    write_jsonl(tmp_path / "implicit.jsonl", [{"chosen": "p c", "rejected": "p r"}])
    recipe = base_recipe(tmp_path, task="dpo", data={"format": "preference", "train": [
        {"path": "pairs.jsonl"}, {"path": "implicit.jsonl"}]})
    with pytest.raises(RecipeError) as info:
        load_all(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))))
    (problem,) = info.value.problems
    assert problem.path == "/data/train/1"
    assert problem.message == ("source 'implicit' gives the trainer the fields ['chosen', 'rejected'], source 'pairs' "
                               "['chosen', 'prompt', 'rejected']: one dataset cannot hold both")


def test_check_data_reports_each_source(tmp_path):
    from runner.commands.check_data import check_data
    from runner.data.check import render

    plan = mixture_plan(tmp_path, THREE)
    report = check_data(plan)
    sources = report["sources"]
    assert list(sources) == ["alpaca", "sharegpt", "messages"]
    splits, _ = load_all(plan)
    for name, entry in sources.items():
        assert entry["drawn"] == splits.drawn[name] and entry["rows"] == len(splits.train_sources[name])
        assert entry["loss_tokens"]["all"] > 0 and entry["measured_rows"] == entry["rows"]
    assert sum(entry["share"] for entry in sources.values()) == pytest.approx(1.0)
    assert sum(entry["token_share"] for entry in sources.values()) == pytest.approx(1.0)
    text = render(report)
    assert f"  messages: {splits.drawn['messages']} examples from its 50 rows;" in text


def test_a_run_trains_on_the_mixture_and_evaluates_each_source(tmp_path):
    from runner.commands.run import run

    write_sources(tmp_path)
    recipe = base_recipe(tmp_path, data={"format": "alpaca", "train": THREE, "eval": [
        {"path": "sharegpt.jsonl", "format": "sharegpt", "limit": 4, "name": "chat"},
        {"path": "alpaca.json", "limit": 6}]}, evaluation={"metrics": ["loss", "exact_match"], "baseline": True,
                                                          "max_examples": 3, "generation": {"max_new_tokens": 2}})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    manifest = run(plan, argv=["test"])
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["after"]["sources"]) == {"chat", "alpaca"}
    for stage in ("before", "after"):
        per_source = metrics[stage]["sources"]
        assert {"loss", "exact_match"} <= set(per_source["chat"])
        # the whole evaluation set's loss is the row-weighted mean of its sources' (each row's loss averaged by
        # tokens, so only close, not equal): both lie between the sources'
        losses = sorted(per_source[name]["loss"] for name in per_source)
        assert losses[0] - 1e-6 <= metrics[stage]["loss"] <= losses[1] + 1e-6
        # the whole set's answers are the sources' own (max_examples 3 each): exact match is their mean
        assert metrics[stage]["exact_match"] == pytest.approx(
            (per_source["chat"]["exact_match"] + per_source["alpaca"]["exact_match"]) / 2)
    # a source's losses are logged under its own name: the run's eval_loss history stays the whole set's
    history = manifest["history"]
    assert [h["eval_loss"] for h in history if "eval_loss" in h][-1] == metrics["after"]["loss"]
    assert [h["eval_chat_loss"] for h in history if "eval_chat_loss" in h][-1] == metrics["after"]["sources"]["chat"]["loss"]
    assert manifest["examples"]["eval_sources"] == {"chat": 4, "alpaca": 6}
    assert sum(manifest["examples"]["train_sources"].values()) == manifest["examples"]["train"]
    report = (run_dir / "report.md").read_text()
    assert "Evaluation source `chat`" in report and "Evaluation source `alpaca`" in report
    card = (run_dir / "README.md").read_text()
    assert "a mixture of 3 sources (interleave)" in card and "- messages: " in card


def test_the_tokenization_cache_keys_on_every_source_and_the_weights(tmp_path):
    from runner.data import tokencache
    from runner.train import models

    def key(plan) -> str:
        splits, _ = load_all(plan)
        tokenizer = models.load_tokenizer(plan["model"])
        settings = tokencache.data_settings(plan["trainer"]["config"])
        return tokencache.for_run(plan, splits, tokenizer, settings).key("train")

    plan = mixture_plan(tmp_path, THREE)
    first = key(plan)
    assert key(mixture_plan(tmp_path, THREE)) == first  # the same recipe hits
    reweighted = [{**THREE[0], "weight": 3}] + THREE[1:]
    assert key(mixture_plan(tmp_path, reweighted)) != first
    # another row in the last source's file (the first source decides nothing about it)
    write_jsonl(tmp_path / "messages.jsonl", MESSAGES[:-1] + [{"messages": [
        {"role": "user", "content": "Say x.", "name": "u"}, {"role": "assistant", "content": "x", "name": None}]}])
    assert key(plan) != first


def test_a_resumed_run_notices_a_changed_source_of_the_mixture(tmp_path):
    from runner.train import resume

    write_sources(tmp_path)
    recipe = base_recipe(tmp_path, data={"format": "alpaca", "train": THREE})
    doc = load_recipe(write_json(tmp_path / "recipe.json", recipe)).to_dict()
    saved = resume.data_files(doc)
    assert sorted(saved) == ["train/0", "train/1", "train/2"]
    write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT[:-1])
    assert resume.changed_files(saved, doc) == [("train/1", str(tmp_path / "sharegpt.jsonl"))]


def test_a_dpo_mixture_of_sharegpt_pairs_and_conversational_pairs_trains(tmp_path, shared_data):
    """LLaMA-Factory's pref_dpo pairs as they are (sharegpt_preference) mixed with conversational `preference`
    rows: both reach DPO as conversational prompt/chosen/rejected, and a run takes steps on the mixture."""
    from runner.commands.run import run

    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": [{"role": "user", "content": f"Reverse {w}"}],
                                            "chosen": [{"role": "assistant", "content": w[::-1]}],
                                            "rejected": [{"role": "assistant", "content": w}]}
                                           for w in ("abc", "hello", "world", "token") * 4])
    recipe = base_recipe(tmp_path, task="dpo", data={"train": [
        {"path": str(shared_data / "pref_dpo" / "dpo_en_demo.json"), "format": "sharegpt_preference", "limit": 8,
         "name": "pref_dpo"},
        {"path": "pairs.jsonl", "format": "preference", "weight": 2}]},
        training={"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 128, "logging_steps": 1,
                  "save_strategy": "no"})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    splits, _ = load_all(plan)
    assert set(splits.train.column_names) == {"prompt", "chosen", "rejected"}
    assert splits.drawn["pref_dpo"] == 8 or splits.drawn["pairs"] == 16  # first_exhausted: one ran out
    manifest = run(plan, argv=["test"])
    assert manifest["status"] == "finished" and manifest["examples"]["train_sources"] == splits.drawn
    assert len([h for h in manifest["history"] if "loss" in h]) == 2


def test_sources_with_and_without_an_optional_field_mix(tmp_path):
    """GRPO prompts with a reference answer and prompts without (the rewards that compare skip those): the missing
    field is null, as in one file whose rows differ."""
    write_jsonl(tmp_path / "with.jsonl", [{"prompt": "reverse ab =", "answer": " ba"}] * 4)
    write_jsonl(tmp_path / "without.jsonl", [{"prompt": "say hi"}] * 4)
    recipe = base_recipe(tmp_path, task="grpo", data={"train": [{"path": "with.jsonl"}, {"path": "without.jsonl"}],
                                                      "mixture": {"strategy": "concatenate"}})
    recipe["rewards"] = [{"type": "exact_match"}]
    recipe["training"] = {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 2,
                          "save_strategy": "no"}
    splits, _ = load_all(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))))
    assert [row["answer"] for row in splits.train] == [" ba"] * 4 + [None] * 4


def test_a_source_the_draw_never_reached_is_said_not_a_crash(tmp_path):
    from runner.commands.check_data import check_data
    from runner.data.check import render

    write_jsonl(tmp_path / "few.jsonl", [{"text": "a b"}] * 2)
    write_jsonl(tmp_path / "many.jsonl", [{"text": "c d"}] * 50)
    recipe = base_recipe(tmp_path, data={"train": [{"path": "few.jsonl", "weight": 10},
                                                   {"path": "many.jsonl", "weight": 0.01}]})
    report = check_data(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))))
    assert report["sources"]["many"]["drawn"] == 0 and report["sources"]["many"]["token_share"] == 0.0
    assert any("many gave no training examples" in warning for warning in report["warnings"])
    assert "  many: 0 examples from its 50 rows; 0.0% of examples" in render(report)


def test_eval_fraction_splits_the_mixture_and_the_counts_are_of_the_rows_that_train(tmp_path):
    splits, _ = load_all(_with_fraction(tmp_path))
    assert sum(splits.drawn.values()) == len(splits.train) and len(splits.eval) == 45  # 10% of 450 rows
    assert "__mixture_source__" not in splits.train.column_names + splits.eval.column_names


def _with_fraction(tmp_path):
    write_sources(tmp_path)
    train = [{**source, "weight": 1} for source in THREE]
    recipe = base_recipe(tmp_path, data={"format": "alpaca", "train": train, "eval_fraction": 0.1,
                                         "mixture": {"strategy": "concatenate"}})
    return build_plan(load_recipe(write_json(tmp_path / "fraction.json", recipe)))
