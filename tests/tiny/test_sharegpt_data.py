"""ShareGPT data trains with no converter: the trainer holds exactly what the same data as chat messages (SFT) or
conversational preference pairs (DPO) gives, and a bad row stops the run before any model loads, by row number."""
from __future__ import annotations

import json

from assets import reverse_rows
from commandline import cli
from conftest import base_recipe, write_json, write_jsonl
from runner.commands.run import prepare
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

ROWS = reverse_rows(12, seed=5)
SYSTEM = "You reverse strings."


def sharegpt_rows() -> list[dict]:
    return [{"system": SYSTEM, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                 {"from": "human", "value": r["prompt"]},
                                                 {"from": "gpt", "value": r["completion"]}]} for r in ROWS]


def as_messages(row: dict) -> dict:
    roles = {"human": "user", "gpt": "assistant"}
    return {"messages": [{"role": "system", "content": row["system"]}] + [
        {"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]}


def prepared_rows(tmp_path, recipe_file, name: str, rows: list[dict], **sections) -> dict:
    """The training rows the trainer holds for `rows` written as tmp_path/name.jsonl."""
    write_jsonl(tmp_path / f"{name}.jsonl", rows)
    recipe = base_recipe(tmp_path, output={"dir": str(tmp_path / name)}, **sections)
    recipe["data"] = {**recipe["data"], "train": {"path": f"{name}.jsonl"}}
    trainer = prepare(build_plan(load_recipe(recipe_file(recipe, f"{name}.json")))).trainer
    return trainer.train_dataset[:]


def test_sharegpt_conversations_train_exactly_as_the_same_chat_messages(tmp_path, recipe_file):
    rows = sharegpt_rows()
    shared = prepared_rows(tmp_path, recipe_file, "sharegpt", rows, data={"format": "sharegpt"})
    plain = prepared_rows(tmp_path, recipe_file, "messages", [as_messages(r) for r in rows],
                          data={"format": "messages"})
    assert shared == plain
    trained = [sum(1 for label in labels if label != -100) for labels in shared["labels"]]
    assert 0 < min(trained) and max(trained) < min(map(len, shared["input_ids"]))  # loss on the gpt turns only


def test_sharegpt_preference_pairs_train_exactly_as_conversational_pairs(tmp_path, recipe_file):
    pairs = [{"conversations": [{"from": "human", "value": r["prompt"]}],
              "chosen": {"from": "gpt", "value": r["completion"]},
              "rejected": {"from": "gpt", "value": r["completion"][::-1]}} for r in ROWS]
    conversational = [{"prompt": [{"role": "user", "content": p["conversations"][0]["value"]}],
                       "chosen": [{"role": "assistant", "content": p["chosen"]["value"]}],
                       "rejected": [{"role": "assistant", "content": p["rejected"]["value"]}]} for p in pairs]
    dpo = {"task": "dpo", "peft": {"method": "lora", "r": 4}}
    shared = prepared_rows(tmp_path, recipe_file, "sharegpt", pairs, data={"format": "sharegpt_preference"}, **dpo)
    plain = prepared_rows(tmp_path, recipe_file, "plain", conversational, data={"format": "preference"}, **dpo)
    assert shared == plain and len(shared["chosen_ids"]) == len(ROWS)


def test_bad_sharegpt_rows_stop_check_data_with_their_row_numbers(tmp_path):
    rows = sharegpt_rows()[:5]
    rows[1]["conversations"] = rows[1]["conversations"][:-1]  # ends with the human's turn
    rows[3]["conversations"][1]["from"] = "human"  # two human turns in a row
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_json(tmp_path / "recipe.json", base_recipe(tmp_path, data={"format": "sharegpt"}))
    result = cli("check-data", str(tmp_path / "recipe.json"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("/data/train: 1 rows end without an answer (the last turn is not gpt or function_call): rows 2 (column "
            "conversations)") in result.stderr
    assert ("/data/train: 1 rows have turns that do not alternate human, gpt, human, ... (after an optional system "
            "turn): rows 4 (column conversations)") in result.stderr
    assert json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0]) == rows[0]  # the data is untouched
