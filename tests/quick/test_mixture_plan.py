"""Mixtures in the plan: data.train / data.eval as lists of sources, each with its own format, columns and
templates, checked before anything loads; the plan lists every source with its expected share."""
from __future__ import annotations

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

ALPACA = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(30)]
SCITLDR = [{"source": ["An abstract.", f"Sentence {i}."], "target": [f"TLDR {i}.", "Another."]} for i in range(10)]
SUMMARY_TEMPLATES = {"instruction": "Summarize: {source}", "output": "{target[0]}"}


def mixture_recipe(tmp_path, train: list, **data) -> dict:
    write_json(tmp_path / "alpaca.json", ALPACA)
    write_jsonl(tmp_path / "scitldr.jsonl", SCITLDR)
    return base_recipe(tmp_path, data={"format": "alpaca", "train": train, **data})


def plan_of(tmp_path, recipe: dict) -> dict:
    return build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))


def problems_of(tmp_path, recipe: dict) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        plan_of(tmp_path, recipe)
    return [(p.path, p.message) for p in info.value.problems]


def test_a_weighted_mixture_is_planned_per_source_with_expected_shares(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json", "weight": 3},
                                       {"path": "scitldr.jsonl", "templates": SUMMARY_TEMPLATES}])
    data = plan_of(tmp_path, recipe)["data"]
    alpaca, scitldr = data["train"]
    assert (alpaca["name"], alpaca["where"], alpaca["templates"]) == ("alpaca", "/data/train/0", {})
    assert alpaca["source"]["path"] == str(tmp_path / "alpaca.json")  # relative to the recipe, like one source
    assert (scitldr["name"], scitldr["templates"], scitldr["templates_at"]) == (
        "scitldr", SUMMARY_TEMPLATES, "/data/train/1/templates")
    assert scitldr["optional"] == ["input"]  # the template makes instruction and output; input may be absent
    mixture = data["mixture"]
    assert mixture["strategy"] == "interleave" and mixture["stopping_strategy"] == "first_exhausted"
    assert mixture["sources"] == {"alpaca": {"rows": 30, "share": 0.75}, "scitldr": {"rows": 10, "share": 0.25}}
    # drawn until the first source runs out: alpaca after 30 / 0.75 = 40 draws, scitldr after 10 / 0.25 = 40
    assert mixture["expected_rows"] == 40


@pytest.mark.parametrize("stopping, expected", [
    ("first_exhausted", 40),  # the heavier source runs out first: 30 rows / 0.75
    ("all_exhausted", 120),  # the lighter one runs out last: 30 rows / 0.25
    ("all_exhausted_without_replacement", 60),  # every row once
])
def test_expected_rows_follow_the_stopping_strategy(tmp_path, stopping, expected):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json", "weight": 3}, {"path": "alpaca.json", "name": "b"}],
                            mixture={"stopping_strategy": stopping})
    assert plan_of(tmp_path, recipe)["data"]["mixture"]["expected_rows"] == expected


def test_a_concatenation_shares_by_rows_and_counts_steps(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json", "limit": 20},
                                       {"path": "scitldr.jsonl", "templates": SUMMARY_TEMPLATES}],
                            mixture={"strategy": "concatenate"})
    plan = plan_of(tmp_path, recipe)
    assert plan["data"]["mixture"]["sources"] == {"alpaca": {"rows": 20, "share": 20 / 30},
                                                  "scitldr": {"rows": 10, "share": 10 / 30}}
    batch = plan["batch"]  # packing is the launch's to decide for this recipe: steps are said for unpacked rows
    assert batch["train_rows"] == 30 and batch["steps_per_epoch_if_not_packed"] == 8  # 30 rows / batch 4


def test_a_sampled_mixture_says_why_its_steps_are_not_known(tmp_path):
    plan = plan_of(tmp_path, mixture_recipe(tmp_path, [{"path": "alpaca.json"}, {"path": "alpaca.json", "name": "b"}]))
    assert plan["batch"]["steps_per_epoch"] is None
    assert "sampled mixture" in plan["batch"]["steps_per_epoch_unknown"]


def test_mixture_mistakes_are_reported_at_their_sources_all_at_once(tmp_path):
    recipe = mixture_recipe(tmp_path, [
        {"path": "alpaca.json", "weight": 2},
        {"path": "alpaca.json"},  # the same default name
        {"path": "scitldr.jsonl", "format": "prompt_completion",  # reaches the trainer as prompt/completion
         "templates": {"prompt": "{sources}", "completion": "{target[0]}"}},
        {"path": "missing.jsonl", "name": "gone"},
    ], mixture={"strategy": "concatenate"})
    found = problems_of(tmp_path, recipe)
    assert ("/data/train/0/weight", "weights apply to strategy 'interleave'; 'concatenate' uses every row of every "
                                    "source once") in found
    assert ("/data/train/1/name", "another source (/data/train/0) is also named 'alpaca'") in found
    assert ("/data/train/2/format", "format 'prompt_completion' reaches the trainer as 'prompt_completion' rows, but "
                                    "/data/train/0 (format 'alpaca') as 'messages' rows: one dataset cannot hold "
                                    "both") in found
    assert ("/data/train/2/templates/prompt", "{sources}: the first row of " + str(tmp_path / "scitldr.jsonl")
            + " has no field 'sources'") in found
    assert ("/data/train/3/path", "file not found: " + str(tmp_path / "missing.jsonl")) in found
    assert len(found) == 5


def test_the_shape_hint_names_the_way_to_a_conversation(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json"}, {"path": "scitldr.jsonl", "format": "prompt_completion",
                                        "templates": {"prompt": "{source}", "completion": "{target[0]}"}}])
    with pytest.raises(RecipeError) as info:
        plan_of(tmp_path, recipe)
    (problem,) = info.value.problems
    assert "alpaca, sharegpt, messages" in problem.hint or "messages, alpaca, sharegpt" in problem.hint
    assert "format 'alpaca' with templates for instruction and output" in problem.hint


@pytest.mark.parametrize("source, path, message", [
    ({"path": "alpaca.json", "wieght": 2}, "/data/train/0/wieght", "unknown key"),
    ({"path": "alpaca.json", "weight": 0}, "/data/train/0/weight", "0 must be greater than 0"),
    ({"path": "alpaca.json", "name": "a b"}, "/data/train/0/name", "must be letters, digits"),
])
def test_a_sources_own_keys_are_validated_with_their_path(tmp_path, source, path, message):
    found = problems_of(tmp_path, mixture_recipe(tmp_path, [source]))
    assert any(where == path and message in text for where, text in found), found


def test_a_misspelt_key_of_a_source_gets_a_hint(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json", "wieght": 2}])
    with pytest.raises(RecipeError) as info:
        plan_of(tmp_path, recipe)
    assert [p.hint for p in info.value.problems if p.path == "/data/train/0/wieght"] == ["did you mean 'weight'?"]


def test_mixture_settings_with_one_source_are_not_silently_ignored(tmp_path):
    recipe = mixture_recipe(tmp_path, {"path": "alpaca.json"}, mixture={"strategy": "concatenate"})
    assert problems_of(tmp_path, recipe) == [
        ("/data/mixture/strategy", "applies to a list of training sources; data.train is one")]


def test_evaluation_sources_take_no_weight_and_references_need_one_file(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json"}],
                            eval=[{"path": "alpaca.json", "weight": 2}, {"path": "scitldr.jsonl",
                                                                         "templates": SUMMARY_TEMPLATES}],
                            )
    recipe["evaluation"] = {"metrics": ["rouge"], "references": "target"}
    found = problems_of(tmp_path, recipe)
    assert ("/data/eval/0/weight", "evaluation sources are evaluated whole: a weight does not apply") in found
    assert ("/evaluation/references", "reads one file's rows in order; data.eval is a list of sources") in found


def test_a_per_source_column_mapping_replaces_the_data_sections(tmp_path):
    write_jsonl(tmp_path / "renamed.jsonl", [{"question": "Q?", "answer": "A."}])
    recipe = mixture_recipe(tmp_path, [{"path": "alpaca.json"},
                                       {"path": "renamed.jsonl", "columns": {"instruction": "question",
                                                                             "output": "answer"}}],
                            columns={"input": "input"})
    alpaca, renamed = plan_of(tmp_path, recipe)["data"]["train"]
    assert alpaca["columns"] == {"instruction": "instruction", "output": "output", "input": "input"}
    assert renamed["columns"] == {"instruction": "question", "output": "answer", "input": "input"}
    assert renamed["optional"] == ["input"] and alpaca["optional"] == []


def test_set_reaches_a_source_of_the_list_by_position(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_json(tmp_path / "recipe.json", mixture_recipe(tmp_path, [{"path": "alpaca.json"},
                                                                          {"path": "alpaca.json", "name": "b"}]))
    recipe = load_recipe(path, ["data.train.1.limit=5", "data.train.0.path=scitldr.jsonl"])
    assert recipe["data"]["train"][1]["limit"] == 5
    assert recipe["data"]["train"][0]["path"] == str(tmp_path / "scitldr.jsonl")  # relative to where you run it
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["data.train.2.limit=5"])
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/data/train/2", "--set 'data.train.2.limit=5': no source 2 here")]


def test_evaluation_data_beside_a_mixture_is_read_as_its_first_source(tmp_path):
    recipe = mixture_recipe(tmp_path, [{"path": "scitldr.jsonl", "templates": SUMMARY_TEMPLATES},
                                       {"path": "alpaca.json"}], format=None)
    recipe["data"]["train"][0]["format"] = recipe["data"]["train"][1]["format"] = "alpaca"
    recipe["evaluation"] = {"data": {"path": "scitldr.jsonl", "limit": 4}}
    chosen = plan_of(tmp_path, recipe)["data"]["evaluation_data"]
    assert (chosen["format"], chosen["templates"]) == ("alpaca", SUMMARY_TEMPLATES)


def test_set_switching_a_sources_file_to_a_hub_id_keeps_its_place_in_the_mixture(tmp_path):
    path = write_json(tmp_path / "recipe.json", mixture_recipe(tmp_path, [
        {"path": "alpaca.json"}, {"path": "scitldr.jsonl", "weight": 3, "limit": 5, "templates": SUMMARY_TEMPLATES}]))
    source = load_recipe(path, ["data.train.1.hub=allenai/scitldr"])["data"]["train"][1]
    assert source["hub"] == "allenai/scitldr" and "path" not in source and source["limit"] is None
    assert (source["weight"], source["templates"], source["name"]) == (3, SUMMARY_TEMPLATES, None)
