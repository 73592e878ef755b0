"""Tool calls in `messages` rows (OpenAI's shape): the row checks, and the turns as a chat template receives them."""
from __future__ import annotations

import json

import pytest

from runner.data import rows, tool_calls

USER = {"role": "user", "content": "2+3?"}
RESULT = {"role": "tool", "content": "5", "tool_call_id": "call_1"}
ANSWER = {"role": "assistant", "content": "5."}


def calling(arguments, **turn) -> dict:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "id": "call_1", "function": {"name": "add", "arguments": arguments}}],
            **turn}


NOT_A_LIST = "have tool_calls that are not a list of {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"


@pytest.mark.parametrize("conversation, problem", [
    ([USER, calling({"a": 2, "b": 3}), RESULT, ANSWER], None),
    ([USER, calling('{"a": 2, "b": 3}', content=""), RESULT, ANSWER], None),  # arguments as a JSON string
    ([USER, calling({"a": 2}), RESULT, RESULT, ANSWER], None),  # two results for the call (parallel calls)
    ([USER, calling({"a": 2})], None),  # a conversation may end with the call it teaches
    ([USER, RESULT, ANSWER], "have a tool turn with no tool call before it (a tool result must follow an "
                             "assistant's tool_calls)"),
    ([USER, ANSWER, RESULT, ANSWER], "have a tool turn with no tool call before it (a tool result must follow an "
                                     "assistant's tool_calls)"),
    ([USER, calling("{a: 2"), RESULT, ANSWER], "have tool call arguments that are neither a JSON object nor a "
                                               "string holding one"),
    ([USER, calling("[2, 3]"), RESULT, ANSWER], "have tool call arguments that are neither a JSON object nor a "
                                                "string holding one"),
    ([USER, calling(None), RESULT, ANSWER], "have tool call arguments that are neither a JSON object nor a "
                                            "string holding one"),
    ([USER, {**calling({}), "tool_calls": {"name": "add"}}, RESULT, ANSWER], NOT_A_LIST),
    ([USER, {**calling({}), "tool_calls": []}, RESULT, ANSWER], NOT_A_LIST),
    ([USER, {**calling({}), "tool_calls": [{"name": "add", "arguments": {}}]}, RESULT, ANSWER], NOT_A_LIST),
    ([USER, {**calling({}), "tool_calls": [{"type": "retrieval", "function": {"name": "a", "arguments": {}}}]}],
     NOT_A_LIST),
    ([USER, {**calling({}), "tool_calls": [{"type": "function", "function": {"arguments": {}}}]}],
     "have a tool call without a function name"),
    ([{**USER, "tool_calls": calling({})["tool_calls"]}, ANSWER],
     "have tool_calls on a turn that is not the assistant's"),
    ([USER, {"role": "assistant", "content": None}], "have a turn that is not {\"role\", \"content\"}"),
])
def test_conversations_with_tool_calls_are_checked_turn_by_turn(conversation, problem):
    assert rows.CHECKS["messages"](conversation) == problem


@pytest.mark.parametrize("value, ok", [
    (None, True), ([], True), ([{"type": "function", "function": {"name": "add", "parameters": {}}}], True),
    (json.dumps([{"type": "function", "function": {"name": "add"}}]), True),
    ("add(a, b)", False), ({"name": "add"}, False), ([["add"]], False), (json.dumps({"name": "add"}), False),
])
def test_the_tools_column_is_a_list_of_function_schemas_or_its_json_string(value, ok):
    assert (tool_calls.tools_problem(value) is None) == ok


def test_turns_reach_the_template_with_arguments_as_objects_and_no_keys_arrow_filled_with_null():
    """Arrow gives every turn of a column every key any turn has (null where absent); templates test
    `'tool_calls' in message` and write `arguments | tojson`, so nulls go and JSON-string arguments are parsed."""
    stored = [{"role": "user", "content": "2+3?", "tool_calls": None, "tool_call_id": None},
              {"role": "assistant", "content": None, "tool_call_id": None, "tool_calls": [
                  {"type": "function", "id": None, "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
              {"role": "tool", "content": "5", "tool_calls": None, "tool_call_id": "call_1"}]
    assert tool_calls.for_template(stored) == [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "content": "5", "tool_call_id": "call_1"}]


def test_a_messages_row_is_stored_with_argument_objects_and_tools_as_a_json_string():
    schema = [{"type": "function", "function": {"name": "add"}}]
    row = {"messages": [USER, calling('{"a": 2}'), RESULT, ANSWER], "tools": schema}
    stored = tool_calls.to_messages_row(row)
    assert stored["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"a": 2}
    assert json.loads(stored["tools"]) == schema and tool_calls.tools_for_template(stored["tools"]) == schema
    plain = {"messages": [USER, ANSWER]}
    assert tool_calls.to_messages_row(plain) == plain  # rows without tools are kept as they are
    assert tool_calls.to_messages_row({**plain, "tools": None}) == {**plain, "tools": None}
    assert tool_calls.tools_for_template(None) is None and tool_calls.tools_for_template("[]") is None


def test_validate_refuses_a_template_file_that_never_reads_tool_calls_when_the_first_row_calls_tools(tmp_path):
    """Seen without loading anything: the recipe's template file, the first row of a local JSONL file."""
    from commandline import cli

    rows = [{"messages": [USER, calling({"a": 2, "b": 3}), RESULT, ANSWER]}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    (tmp_path / "tools.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                                          "{{ m.tool_calls | tojson if m.tool_calls }}\n{% endfor %}")
    from conftest import TINY_MODEL

    recipe = {"name": "t", "model": {"name_or_path": str(TINY_MODEL), "chat_template": "plain.jinja"},
              "data": {"format": "messages", "train": {"path": "train.jsonl"}}}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    result = cli("validate", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"/model/chat_template: the data call tools (/data/train: the first row of {tmp_path / 'train.jsonl'}), "
            f"but the chat template ({tmp_path / 'plain.jinja'}) never reads a turn's tool_calls: it cannot write the "
            "calls (it has no tool support)") in result.stderr
    assert "hint: name a Jinja template file with tool support in model.chat_template" in result.stderr
    recipe["model"]["chat_template"] = "tools.jinja"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert cli("validate", str(tmp_path / "recipe.json"), cwd=tmp_path).returncode == 0
    del recipe["model"]["chat_template"]  # the tiny model's own chat_template.jinja writes only the content
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    own = cli("validate", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert own.returncode == 2 and f"({TINY_MODEL / 'chat_template.jinja'}) never reads" in own.stderr, own.stderr


def test_conversational_prompts_completions_and_preference_pairs_refuse_tool_calls():
    refused = "have tool calls or tool turns, which only formats messages and sharegpt take"
    assert rows.CHECKS["prompt"]([USER, calling({"a": 2}), RESULT]) == refused
    assert rows.CHECKS["chosen"]([RESULT]) == refused
    assert rows.CHECKS["completion"]([ANSWER]) is None
