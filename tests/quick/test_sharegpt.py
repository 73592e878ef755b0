"""ShareGPT rows (LLaMA-Factory's and axolotl's shape): the checks a row must pass and what it becomes."""
from __future__ import annotations

import json

import pytest

from runner.data import sharegpt
from real_models import SHARED_DATA

H, G, S = "human", "gpt", "system"
CALL = '{"name": "add", "arguments": {"a": 2, "b": 3}}'


def turns(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


def test_a_conversation_becomes_chat_messages_with_its_system_prompt():
    row = {"conversations": turns((H, "hi"), (G, "hello"), (H, "2+2?"), (G, "4")), "system": "Be brief."}
    assert sharegpt.to_messages(row) == {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]}
    opening = {"conversations": turns((S, "Be brief."), (H, "hi"), (G, "hello"))}
    assert sharegpt.to_messages(opening)["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_preference_pair_becomes_trls_conversational_preference_row():
    row = {"conversations": turns((H, "hi"), (G, "hello"), (H, "2+2?")),
           "chosen": {"from": G, "value": "4"}, "rejected": {"from": G, "value": "5"}}
    assert sharegpt.to_preference(row) == {
        "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                   {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.mark.parametrize("conversation, problem", [
    (turns((H, "hi"), (G, "hello")), None),
    (turns((S, "sys"), (H, "hi"), (G, "hello")), None),
    ([], "have no turns"),
    (turns((H, "hi"), (H, "again"), (G, "x")), "have turns that do not alternate human, gpt, human, ... (after an "
                                               "optional system turn)"),
    (turns((G, "first"), (H, "hi"), (G, "x")), "have turns that do not alternate human, gpt, human, ... (after an "
                                              "optional system turn)"),
    (turns((H, "hi"), (S, "late system"), (G, "x")), "have turns that do not alternate human, gpt, human, ... "
                                                     "(after an optional system turn)"),
    ([{"role": "user", "content": "hi"}], "have a turn that is not {\"from\", \"value\"}"),
    (turns((H, "hi"), ("function_call", CALL), ("observation", "5"), (G, "x")), None),
    (turns((H, "hi"), ("function_call", CALL)), None),  # SFT may end with the call it teaches
    (turns((H, "hi"), ("function_call", "{}"), ("observation", "{}"), (G, "x")),
     "have a function_call turn whose value is not a JSON {\"name\", \"arguments\"} (or a list of them)"),
    (turns((H, "hi"), ("function_call", '{"name": "add", "arguments": 5}'), ("observation", "5"), (G, "x")),
     "have tool call arguments that are neither a JSON object nor a string holding one"),
    (turns((H, "hi"), (G, "x"), ("observation", "5"), (G, "y")),
     "have an observation turn that does not follow a function_call turn"),
    (turns((H, "hi"), ("observation", "5"), (G, "y")),
     "have turns that do not alternate human, gpt, human, ... (after an optional system turn)"),
    (turns((H, "hi")), "end without an answer (the last turn is not gpt or function_call)"),
    (turns((H, "hi"), ("bot", "x")), "have a turn whose `from` is 'bot', not one of ['human', 'gpt', 'system', "
                                    "'function_call', 'observation']"),
])
def test_conversations_are_checked_turn_by_turn(conversation, problem):
    assert sharegpt.conversation_problem(conversation) == problem


def test_a_preference_request_ends_with_the_human_and_answers_are_gpt_turns():
    assert sharegpt.request_problem(turns((H, "hi"))) is None
    assert sharegpt.request_problem(turns((H, "hi"), (G, "x"))) == (
        "end with an answer (the conversation before chosen/rejected must end with the human's turn)")
    assert sharegpt.answer_problem({"from": G, "value": "x"}) is None
    assert sharegpt.answer_problem({"from": H, "value": "x"}) == "are not a gpt turn"
    assert sharegpt.answer_problem("x") == "have a turn that is not {\"from\", \"value\"}"


def test_every_pair_of_llama_factorys_dpo_demo_passes_and_converts():
    path = SHARED_DATA / "pref_dpo" / "dpo_en_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    rows = json.loads(path.read_text())
    assert len(rows) == 300
    assert [sharegpt.request_problem(r["conversations"]) for r in rows] == [None] * 300
    assert {sharegpt.answer_problem(r[k]) for r in rows for k in ("chosen", "rejected")} == {None}
    converted = [sharegpt.to_preference(r) for r in rows]
    assert sum(1 for c in converted if c["prompt"][0]["role"] == "system") == 80  # as its SOURCE.md counts
    assert all(c["prompt"][-1]["role"] == "user" for c in converted)


def test_an_empty_answer_and_two_system_prompts_are_refused():
    assert sharegpt.answer_problem({"from": G, "value": "  "}) == "are empty"
    both = {"system": "A", "conversations": turns((S, "B"), (H, "hi"), (G, "x"))}
    assert sharegpt.system_problem(both) == "have both a system column and an opening system turn (keep one)"
    assert sharegpt.system_problem({**both, "system": None}) is None


def test_tool_turns_become_an_assistant_tool_call_and_a_tool_turn_with_the_tools_in_openais_shape():
    """LLaMA-Factory's function_call / observation turns and its `tools` column (a JSON string of bare schemas)."""
    schema = {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {}}}
    row = {"conversations": turns((H, "2+3?"), ("function_call", CALL), ("observation", "5"), (G, "5.")),
           "tools": json.dumps([schema])}
    assert sharegpt.to_messages(row) == {"messages": [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "content": "5"}, {"role": "assistant", "content": "5."}],
        "tools": json.dumps([{"type": "function", "function": schema}])}
    parallel = turns((H, "?"), ("function_call", json.dumps([{"name": "a", "arguments": "{}"},
                                                              {"name": "b", "arguments": {"x": 1}}])))
    calls = sharegpt.to_messages({"conversations": parallel})["messages"][1]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("a", {}), ("b", {"x": 1})]


def test_preference_pairs_refuse_tool_turns():
    assert sharegpt.request_problem(turns((H, "hi"), ("function_call", CALL), ("observation", "5"), (H, "x"))) == (
        "have a tool turn (function_call / observation), which preference pairs do not take")
