"""data.templates: fields built from a row's own fields (SciTLDR's sentence lists and reference lists, WMT22's
nested translation), checked by `validate` against the first row of the file, with no code run."""
from __future__ import annotations

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe import templates
from runner.recipe.load import load_recipe

SCITLDR_ROW = {"source": ["First sentence.", "Second one."], "target": ["The TLDR.", "A reviewer's TLDR."],
               "paper_id": "x1", "title": "A paper"}
WMT_ROW = {"translation": {"de": "Hallo Welt", "en": "Hello world"}}


@pytest.mark.parametrize("template, row, expected", [
    ("Summarize: {source}", SCITLDR_ROW, "Summarize: First sentence. Second one."),
    ("{target[0]}", SCITLDR_ROW, "The TLDR."),
    ("{target[1]}", SCITLDR_ROW, "A reviewer's TLDR."),
    ("Translate to English: {translation.de}", WMT_ROW, "Translate to English: Hallo Welt"),
    ("{{literal}} {title}", SCITLDR_ROW, "{literal} A paper"),
    ("no fields at all", SCITLDR_ROW, "no fields at all"),
])
def test_templates_render_nested_fields_list_items_and_joined_lists(template, row, expected):
    assert templates.render(templates.parse(template), row) == expected


@pytest.mark.parametrize("template, row, message", [
    ("{target[5]}", SCITLDR_ROW, "{target[5]}: no item 5 (the value there is a list of 2 items)"),
    ("{source}", {**SCITLDR_ROW, "source": []}, "{source}: empty"),
    ("{title}", {**SCITLDR_ROW, "title": ""}, "{title}: empty"),
    ("{translation.fr}", WMT_ROW, "{translation.fr}: no field 'fr' (fields there: de, en)"),
    ("{missing}", SCITLDR_ROW, "{missing}: no field 'missing' (fields there: source, target, paper_id, title)"),
    ("{translation}", WMT_ROW, "{translation}: an object cannot be written as text"),
])
def test_a_row_a_template_cannot_fill_says_what_is_missing(template, row, message):
    with pytest.raises(templates.TemplateError) as info:
        templates.render(templates.parse(template), row)
    assert str(info.value) == message


def plan_problems(tmp_path, **data) -> list[tuple[str, str, str | None]]:
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": "train.jsonl"}, **data})
    path = write_json(tmp_path / "recipe.json", recipe)
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(path))
    return [(p.path, p.message, p.hint) for p in info.value.problems]


def test_validate_names_the_fields_the_first_row_has(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [SCITLDR_ROW])
    found = plan_problems(tmp_path, templates={"prompt": "Summarize: {sources}", "completion": "{target[0]}"})
    assert found == [("/data/templates/prompt", "{sources}: the first row of " + str(tmp_path / "train.jsonl")
                      + " has no field 'sources'", "did you mean 'source'?")]


def test_bad_templates_are_reported_at_their_recipe_path_all_at_once(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [SCITLDR_ROW])
    found = plan_problems(tmp_path, templates={"prompt": "{source", "completion": "{a b}", "text": "{title}"},
                          columns={"completion": "target"})
    assert found == [
        ("/data/templates/prompt", "the '{' at character 1 is never closed", None),
        ("/data/templates/completion", "'completion' is also mapped to a column in data.columns",
         "keep either the template or the column"),
        ("/data/templates/completion", "'{a b}' is not a field path (names joined by dots, each optionally followed "
                                       "by [index])", None),
        ("/data/templates/text", "format 'prompt_completion' has no field 'text'", "its fields: prompt, completion"),
    ]


def test_templated_fields_need_no_column_and_plan_records_the_templates(tmp_path):
    write_json(tmp_path / "train.json", [WMT_ROW])  # a JSON array, as WMT22's files are
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": "train.json"},
                                         "templates": {"prompt": "German: {translation.de}\nEnglish:",
                                                       "completion": " {translation.en}"}})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert plan["data"]["train"][0]["templates"] == {"prompt": "German: {translation.de}\nEnglish:",
                                         "completion": " {translation.en}"}


def test_evaluation_references_are_checked_before_anything_loads(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [SCITLDR_ROW])
    fields = {"templates": {"prompt": "{source}", "completion": " {target[0]}"}}
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                         "eval_fraction": 0.5, **fields},
                         evaluation={"metrics": ["rouge"], "references": "target"})
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("/evaluation/references", "needs the evaluation rows as they are in a file: data.eval or evaluation.data")]
    recipe["data"] = {**recipe["data"], "eval_fraction": None, "eval": {"path": "train.jsonl"}}
    recipe["evaluation"] = {"metrics": ["rouge"], "references": "targets"}
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert [(p.path, p.hint) for p in info.value.problems] == [("/evaluation/references", "did you mean 'target'?")]
    recipe["evaluation"] = {"metrics": ["loss"], "references": "target"}
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert info.value.problems[0].message == "only the generative metrics read references (exact_match, rouge, bleu)"
    recipe["evaluation"] = {"metrics": ["rouge", "exact_match"], "references": "target"}
    assert build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))["evaluation"]["references"] == "target"


def test_validate_fills_each_template_from_the_first_row_and_refuses_turn_fields(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [SCITLDR_ROW])
    found = plan_problems(tmp_path, templates={"prompt": "{source}", "completion": " {target[2]}"})
    assert found == [("/data/templates/completion", "the first row of " + str(tmp_path / "train.jsonl")
                      + " cannot fill it: {target[2]}: no item 2 (the value there is a list of 2 items)", None)]
    recipe = base_recipe(tmp_path, data={"format": "messages", "train": {"path": "train.jsonl"},
                                         "templates": {"messages": "{source}"}})
    with pytest.raises(RecipeError) as info:  # the schema offers no template for a turns field
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert [p.path for p in info.value.problems] == ["/data/templates/messages"]
