"""Careless-user data faults (issue 13, "Nothing lost, no tracebacks"): bad files of every kind, truncation that
drops examples, digit-only text in CSV, secrets pasted into a recipe.

Each case runs the command line as a user does (tests/faults.py) and asserts the exit code, no traceback, a
message naming the recipe path, the file (and line or row) and the fix, and that the user's files are byte for
byte unchanged. Bad files are generated here. The check happens before any model loads wherever it can
(`validate`: the plan; `check-data`: the data and the tokenizer); `run` only where training itself is the point.

Cases per kind (KINDS below counts them, and a test pins the counts):
  path      - validate: the data path is not a data file
  file      - check-data: the file cannot be read as its suffix says (encoding, empty, malformed, one object)
  table     - check-data / run: CSV and TSV text columns of digits only are text
  truncate  - check-data / run: dropped vs truncated examples, said as the trainer then does, and the preview cap
  secret    - redact() per key shape, positive and negative; a run whose description holds each shape
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_recipe, write_json, write_jsonl
from faults import Snapshot, assert_user_error, cli

# --- the data path (validate: no data read, no torch) ------------------------------------------------------------


def _directory(tmp_path: Path) -> str:
    folder = tmp_path / "train.jsonl"  # a folder named like a file: the suffix passes, the path is not a file
    write_jsonl(folder / "part-1.jsonl", [{"text": "a"}])
    return "train.jsonl"


def _suffix(name: str):
    def make(tmp_path: Path) -> str:
        write_jsonl(tmp_path / name, [{"text": "a"}])
        return name
    return make


PATH_CASES = {
    "a directory": (_directory, ["/data/train/path", "is a directory, not a data file",
                                 "name one file inside it (it holds part-1.jsonl); each source reads one file"]),
    "a .txt file": (_suffix("train.txt"), ["/data/train/path", "train.txt", "must end in .json, .jsonl, .csv, "
                                           ".tsv or .parquet", "one JSON object per line in a .jsonl file"]),
    "an upper-case suffix": (_suffix("train.JSONL"), ["/data/train/path", "train.JSONL", "must end in .json"]),
    "a compressed file": (_suffix("train.jsonl.gz"), ["/data/train/path", "train.jsonl.gz", "must end in .json"]),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_a_data_path_that_is_not_a_data_file(tmp_path, case):
    make, expected = PATH_CASES[case]
    path = write_json(tmp_path / "recipe.json", base_recipe(tmp_path, data={"train": {"path": make(tmp_path)}}))
    user_files = Snapshot(tmp_path)
    assert_user_error(cli("validate", path), *expected)
    user_files.assert_unchanged()


# --- files that cannot be read as their suffix says (check-data: before any model loads) ---------------------------

LATIN1 = '{"text": "caf\u00e9"}\n'.encode("latin-1")
FILE_CASES = {
    # name: (file name, its bytes, texts the message must hold)
    "latin-1 in JSON lines": ("train.jsonl", b'{"text": "ok"}\n' + LATIN1,
                              ["/data/train/path", "train.jsonl", "is not UTF-8 text: byte 0xe9 at line 2 (byte "
                               "offset 28)", "re-encode it as UTF-8", "iconv -f WINDOWS-1252 -t UTF-8 train.jsonl"]),
    "latin-1 in CSV": ("train.csv", b"text\nok\nna\xefve\n",
                       ["/data/train/path", "train.csv", "byte 0xef at line 3 (byte offset 10)", "iconv"]),
    "UTF-16 JSON lines": ("train.jsonl", '{"text": "ok"}\n'.encode("utf-16"),
                          ["/data/train/path", "not UTF-8", "line 1 (byte offset 0)", "it starts like UTF-16",
                           "iconv -f UTF-16 -t UTF-8"]),
    "an empty JSON lines file": ("train.jsonl", b"", ["/data/train/path", "train.jsonl is empty",
                                                      "one JSON object per line"]),
    "a file of blank lines": ("train.jsonl", b"\n  \n\n", ["/data/train/path", "is empty", "write the examples"]),
    "an empty CSV file": ("train.csv", b"", ["/data/train/path", "train.csv is empty", "a header row, then one "
                                             "example per line"]),
    "an empty parquet file": ("train.parquet", b"", ["/data/train/path", "train.parquet is empty (0 bytes)"]),
    "a CSV with only its header": ("train.csv", b"text\n", ["/data/train/path", "train.csv holds a header row but "
                                                             "no examples", "add one example per line"]),
    "a TSV with only its header": ("train.tsv", b"text\tlabel\n", ["/data/train/path", "train.tsv holds a header "
                                                                    "row but no examples"]),
    "an empty JSON list": ("train.json", b"[]\n", ["/data/train/path", "no examples in", "train.json",
                                                   "a list of objects"]),
    "a broken JSON line": ("train.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n',
                           ["/data/train/path", "line 3 of", "train.jsonl is not one JSON object",
                            "'{\"text\": \"c\"'", "one JSON object per line"]),
    "a JSON line that is a list": ("train.jsonl", b'{"text": "a"}\n["b"]\n',
                                   ["/data/train/path", "line 2 of", "is a JSON list, not an object"]),
    "a broken JSON list": ("train.json", b'[\n{"text": "a"}\n{"text": "b"}\n]\n',  # a comma missing
                           ["/data/train/path", "train.json is not valid JSON at line 3, column 1",
                            "a list of objects ([{...}, {...}])"]),
    "one JSON object in a .json file": ("train.json", b'{\n  "text": "the only example"\n}\n',
                                        ["/data/train/path", "train.json holds one JSON object, which reads as a "
                                         "single example", "a list of objects", "one line of a .jsonl file"]),
    "examples under one key of a .json object": ("train.json", b'{"data": [{"text": "a"}, {"text": "b"}]}\n',
                                                 ["/data/train/path", "train.json holds one JSON object whose 'data' "
                                                  "holds the examples (2 of them)", "write the list itself"]),
    "a CSV quote never closed": ("train.csv", b'text\n"unclosed\nb\n', ["/data/train/path", "train.csv",
                                                                         "every opening quote a closing one"]),
    "a ragged CSV row": ("train.csv", b"text\na\nb,c\n", ["/data/train/path", "train.csv", "line 3, saw 2",
                                                         "as many cells as the header row"]),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_a_data_file_that_cannot_be_read(tmp_path, case):
    name, content, expected = FILE_CASES[case]
    (tmp_path / name).write_bytes(content)
    path = write_json(tmp_path / "recipe.json", base_recipe(tmp_path, data={"train": {"path": name}}))
    user_files = Snapshot(tmp_path)
    assert_user_error(cli("check-data", path), *expected)
    user_files.assert_unchanged()


def test_a_bad_evaluation_file_is_named_at_its_own_path(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}, {"text": "b"}])
    (tmp_path / "eval.jsonl").write_bytes(LATIN1)
    recipe = base_recipe(tmp_path, data={"eval": {"path": "eval.jsonl"}})
    path = write_json(tmp_path / "recipe.json", recipe)
    user_files = Snapshot(tmp_path)
    assert_user_error(cli("check-data", path), "/data/eval/path", "eval.jsonl is not UTF-8", "line 1", "iconv")
    user_files.assert_unchanged()


# --- CSV/TSV text columns are text, whatever their cells look like -----------------------------------------------

def _table(rows: list[list[str]], separator: str) -> bytes:
    return "".join(separator.join(row) + "\n" for row in rows).encode()


ARITHMETIC = [["prompt", "completion"]] + [[f"{a}+{b}=", f"{a + b}"] for a in range(3) for b in range(4)]
TABLE_CASES = {
    "digit-only completions (CSV)": ("train.csv", _table(ARITHMETIC, ","), {"format": "prompt_completion"}, "sft"),
    "digit-only completions (TSV)": ("train.tsv", _table(ARITHMETIC, "\t"), {"format": "prompt_completion"}, "sft"),
    "digit-only text, integer labels": (
        "train.csv", _table([["text", "label"]] + [[str(1000 + i), str(i % 2)] for i in range(8)], ","),
        {"format": "labelled"}, "classification"),
    "text that pandas reads as missing": (
        "train.csv", _table([["text"], ["NA"], ["None"], ["null"], ["0042"]], ","), {"format": "text"}, "sft"),
}


@pytest.mark.parametrize("case", TABLE_CASES)
def test_a_table_text_column_of_digits_is_text(tmp_path, case):
    name, content, data, task = TABLE_CASES[case]
    (tmp_path / name).write_bytes(content)
    recipe = base_recipe(tmp_path, task=task, data={"train": {"path": name}, **data})
    path = write_json(tmp_path / "recipe.json", recipe)
    user_files = Snapshot(tmp_path)
    out = cli("check-data", path, "--json")
    assert out.code == 0 and "Traceback" not in out.stderr, out
    report = json.loads(out.stdout)
    assert report["examples"]["train"] == content.count(b"\n") - 1
    if case == "text that pandas reads as missing":  # kept as written, not turned into nulls
        assert report["preview"].startswith("NA")
    user_files.assert_unchanged()


def test_a_csv_of_digit_only_answers_trains(tmp_path):
    (tmp_path / "train.csv").write_bytes(_table(ARITHMETIC, ","))
    recipe = base_recipe(tmp_path, data={"train": {"path": "train.csv"}, "format": "prompt_completion"})
    path = write_json(tmp_path / "recipe.json", recipe)
    user_files = Snapshot(tmp_path / "train.csv", path)
    out = cli("run", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["examples"]["train"] == len(ARITHMETIC) - 1
    user_files.assert_unchanged()


def test_a_non_text_json_value_names_the_fix(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "2+2=", "completion": 4}])
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion"})
    path = write_json(tmp_path / "recipe.json", recipe)
    user_files = Snapshot(tmp_path)
    assert_user_error(cli("check-data", path), "/data/train", "1 rows are not text: rows 1 (column completion)",
                      'write them as strings (in JSON "42", not 42')
    user_files.assert_unchanged()


# --- truncation: dropped vs truncated, as the trainer then does it ------------------------------------------------

def truncation_rows(long: int = 2, medium: int = 3, short: int = 20) -> list[dict]:
    """With the tiny tokenizer (one token per byte) and max_length 32: a 40-token prompt loses its whole answer
    (TRL then drops the example); a 30-token prompt + " ab" + end (34) is cut but keeps " a"; 12 + 3 + 1 fit."""
    return ([{"prompt": "p" * 40, "completion": " ab"}] * long + [{"prompt": "q" * 30, "completion": " ab"}] * medium
            + [{"prompt": "reverse ba =", "completion": " ab"}] * short)


def truncation_recipe(tmp_path: Path, **training) -> Path:
    write_jsonl(tmp_path / "train.jsonl", truncation_rows())
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion"}, training={"max_length": 32, **training})
    return write_json(tmp_path / "recipe.json", recipe)


DROPPED = ("2 of the 25 training examples will be dropped by the trainer: truncation at max_length 32 cuts away "
           "every token that carries loss (rows 1, 2); it trains on the other 23")
TRUNCATED = ("3 of the 25 training examples (12.0%) are longer than max_length 32 and will be truncated to it "
             "(the start is kept and still carries loss)")


def test_check_data_says_how_many_examples_are_dropped_and_how_many_truncated(tmp_path):
    path = truncation_recipe(tmp_path)
    user_files = Snapshot(tmp_path)
    out = cli("check-data", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    assert f"warning: {DROPPED}" in out.stdout and f"warning: {TRUNCATED}" in out.stdout, out
    assert "examples truncated: 3; examples dropped (every loss token cut off): 2" in out.stdout
    user_files.assert_unchanged()


def test_a_run_says_how_many_examples_are_dropped_and_records_it(tmp_path):
    path = truncation_recipe(tmp_path)
    user_files = Snapshot(tmp_path / "train.jsonl", path)
    out = cli("run", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    assert f"warning: {DROPPED}" in out.stderr and f"warning: {TRUNCATED}" in out.stderr, out
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert DROPPED in record["data_warnings"] and TRUNCATED in record["data_warnings"]
    assert record["examples"]["train"] == 25 and record["trainer_rows"]["train"] == 23, "loaded, then trained on"
    user_files.assert_unchanged()


def test_the_counts_are_what_the_trainer_does(tmp_path):
    """The trainer's prepared datasets hold exactly the examples the preflight said it would keep (train and eval)."""
    from runner.plan.build import build_plan
    from runner.commands.check_data import check_data
    from runner.recipe.load import load_recipe
    from runner.commands.run import prepare

    write_jsonl(tmp_path / "eval.jsonl", truncation_rows(long=1, medium=1, short=3))
    path = truncation_recipe(tmp_path)
    recipe = json.loads(path.read_text())
    recipe["data"]["eval"] = {"path": "eval.jsonl"}
    plan = build_plan(load_recipe(write_json(path, recipe)))
    report = check_data(plan)
    assert (report["truncated"], report["loss_tokens"]["dropped"], report["eval_loss_tokens"]["dropped"]) == (3, 2, 1)
    assert ("1 of the 5 evaluation examples will be dropped by the trainer: truncation at max_length 32 cuts away "
            "every token that carries loss (rows 1); the evaluation loss is measured on the other 4") \
        in report["warnings"]
    trainer = prepare(plan).trainer
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (25 - 2, 5 - 1)
    assert sum(len(row["input_ids"]) == 32 for row in trainer.train_dataset) == 3  # the truncated ones


def test_packed_examples_left_without_loss_are_named_not_called_dropped(tmp_path):
    path = truncation_recipe(tmp_path, packing=True, packing_strategy="bfd")
    out = cli("check-data", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    assert ("warning: 2 of the 25 training examples lose every token that carries loss to truncation at max_length "
            "32: packed, they stay in the data and train on nothing (rows 1, 2)") in out.stdout, out
    assert "will be dropped" not in out.stdout


TRUNCATION_REFUSALS = {
    "too many training answers cut away": (
        [{"prompt": "p" * 40, "completion": " ab"}] * 5 + [{"prompt": "reverse ba =", "completion": " ab"}] * 20, None,
        ["/training/max_length", "5 of 25 examples measured (20%) would lose every token that carries loss",
         "(rows 1, 2, 3, 4, 5)", "raise training.max_length"]),
    "every evaluation answer cut away": (
        truncation_rows(long=0), [{"prompt": "p" * 40, "completion": " ab"}] * 2,
        ["/training/max_length", "all 2 evaluation examples measured lose every token that carries loss",
         "nothing to evaluate on", "raise training.max_length"]),
}


@pytest.mark.parametrize("case", TRUNCATION_REFUSALS)
def test_truncation_that_leaves_nothing_to_learn_or_measure_is_refused(tmp_path, case):
    train, held_out, expected = TRUNCATION_REFUSALS[case]
    write_jsonl(tmp_path / "train.jsonl", train)
    data = {"format": "prompt_completion"}
    if held_out:
        write_jsonl(tmp_path / "eval.jsonl", held_out)
        data["eval"] = {"path": "eval.jsonl"}
    path = write_json(tmp_path / "recipe.json", base_recipe(tmp_path, data=data, training={"max_length": 32}))
    user_files = Snapshot(tmp_path)
    assert_user_error(cli("check-data", path), *expected)
    user_files.assert_unchanged()


def test_check_data_shows_a_huge_example_cut_saying_where_and_how_much(tmp_path):
    text = "start " + "x" * 1_000_000 + " the end"
    write_jsonl(tmp_path / "train.jsonl", [{"text": text}])
    path = write_json(tmp_path / "recipe.json", base_recipe(tmp_path))
    out = cli("check-data", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    assert len(out.stdout) < 5000, len(out.stdout)
    shown = len(text) + len("<|end|>") - 2000
    assert f"[... cut after character 1,000: {shown:,} of {shown + 2000:,} characters not shown ...]" in out.stdout
    assert "  start xxx" in out.stdout and "x the end<|end|>" in out.stdout


def test_a_long_preview_keeps_its_no_loss_marks_balanced():
    from runner.data.check import _marked, _take

    parts = [("p" * 10, False), ("answer", True)]
    assert _marked(_take(parts, 12)) == "⟦pppppppppp⟧an"


# --- secrets: every common key shape is masked in what the runner writes -----------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"  # a git commit, or a W&B key: the same shape
SECRET_SHAPES = {
    # name: (text as pasted, the secret part that must not survive)
    "Hugging Face token": ("hf_" + "A1b2" * 9, None),
    "OpenAI key": ("sk-" + "Zq9" * 16, None),
    "OpenAI project key": ("sk-proj-" + "aB3_" * 12, None),
    "Anthropic key": ("sk-ant-api03-" + "Kx7-" * 20, None),
    "GitHub classic token": ("ghp_" + "R5t" * 12, None),
    "GitHub OAuth token": ("gho_" + "R5t" * 12, None),
    "GitHub app token": ("ghs_" + "R5t" * 12, None),
    "GitHub fine-grained token": ("github_pat_11ABCDEFG0" + "x_Y9" * 15, None),
    "GitLab token": ("glpat-" + "a1B2" * 5, None),
    "Slack bot token": ("xoxb-1234567890-0987654321-" + "AbCd" * 6, None),
    "AWS access key id": ("AKIA" + "Z2X3C4V5B6N7M8L9", None),
    "AWS temporary key id": ("ASIA" + "Q1W2E3R4T5Y6U7I8", None),
    "Google API key": ("AIza" + "Sy0-_" * 7, None),
    "npm token": ("npm_" + "a1B2c3" * 6, None),
    "Stripe live key": ("sk_live_" + "4eC39HqL" * 3, None),
    "JWT": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", None),
    "W&B key (bare 40 hex)": (SHA, None),
    "URL with a password": ("https://alice:s3cr3t-Pa55@data.example.com/train.jsonl", "s3cr3t-Pa55"),
}


@pytest.mark.parametrize("case", SECRET_SHAPES)
def test_redact_masks_each_key_shape(case):
    from runner.records.secrets import MASK, redact

    pasted, secret = SECRET_SHAPES[case]
    masked = redact(f"tried it with {pasted}, then gave up", secrets=[])
    assert (secret or pasted) not in masked and MASK in masked, masked
    assert masked.startswith("tried it with ") and masked.endswith(", then gave up")


def test_a_url_keeps_its_user_and_host():
    from runner.records.secrets import redact

    assert redact("https://alice:pw123456@host.example/x", secrets=[]) == "https://alice:***@host.example/x"


NOT_SECRETS = {
    # name: (a JSON-like value the runner records, kept exactly)
    "a pinned model revision": {"model": {"revision": SHA}},
    "a tokenizer revision": {"model": {"tokenizer_revision": SHA}},
    "a data revision": {"data": {"train": {"hub": "org/set", "revision": SHA}}},
    "a hash the runner records": {"tokenization_cache": {"hash": SHA}},
    "a Hugging Face cache snapshot path": {"model": {"name_or_path": f"/home/u/.cache/huggingface/hub/models--org--m/"
                                                                    f"snapshots/{SHA}"}},
    "a file inside a snapshot": {"error": f"cannot read /cache/snapshots/{SHA}/config.json"},
    "a sha256 (64 hex)": {"description": "data sha256 " + "ab" * 32},
    "39 hex characters": {"description": SHA[:39]},
    "a URL without a password": {"hub": "https://user@host.example/x:y"},
    "a port and a path": {"url": "http://localhost:8080/v1/models@latest"},
    "short sk- text": {"description": "sk-learn and risk-free"},
    "a name with hf_ in it": {"name": "my_hf_run-v2"},
    "ordinary words": {"description": "AKIA is not a key on its own; neither is eyJ"},
    "a git commit under its own key": {"git_commit": SHA, "data_shape": {"conversational": True}},
}


@pytest.mark.parametrize("case", NOT_SECRETS)
def test_redact_keeps_what_only_looks_like_a_secret(case):
    from runner.records.secrets import redact

    value = NOT_SECRETS[case]
    assert redact(value, secrets=[]) == value


def test_a_commit_in_free_text_is_masked_where_a_revision_field_keeps_it():
    from runner.records.secrets import redact

    record = {"description": f"wandb key {SHA}", "model": {"revision": SHA}}
    assert redact(record, secrets=[]) == {"description": "wandb key ***", "model": {"revision": SHA}}


def test_no_key_shape_reaches_the_run_records(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"example {i}"} for i in range(8)])
    pasted = [p for p, _ in SECRET_SHAPES.values()]
    recipe = base_recipe(tmp_path, description="keys: " + " ; ".join(pasted))
    path = write_json(tmp_path / "recipe.json", recipe)
    user_files = Snapshot(tmp_path / "train.jsonl", path)
    out = cli("run", path)
    assert out.code == 0 and "Traceback" not in out.stderr, out
    secrets = [secret or pasted for pasted, secret in SECRET_SHAPES.values()]
    records = {name: (tmp_path / "run" / name).read_text() for name in ("recipe.json", "plan.json", "run.json",
                                                                         "report.md")}
    for name in ("recipe.json", "plan.json"):  # where the description is recorded: there, masked
        assert "keys: ***" in records[name] and "alice:***@data.example.com" in records[name], name
    for path in (tmp_path / "run").rglob("*"):  # the four records above, and every other file of the run
        content = records.get(path.name) or (path.read_bytes().decode("utf-8", "replace") if path.is_file() else "")
        leaked = [secret for secret in secrets if secret in content]
        assert not leaked, (path, leaked)
    user_files.assert_unchanged()


# --- the harness: counts of cases per kind -----------------------------------------------------------------------

KINDS = {
    "path": len(PATH_CASES),
    "file": len(FILE_CASES) + 1,  # + the evaluation file
    "table": len(TABLE_CASES) + 2,  # + a run on digit-only answers, + a JSON number named with the fix
    "truncate": 5 + len(TRUNCATION_REFUSALS) + 1,  # + the balanced marks unit case
    "secret": len(SECRET_SHAPES) + 1 + len(NOT_SECRETS) + 1 + 1,
}


def test_the_case_counts_per_kind():
    """What this file covers, as the issue asks: a count per kind (update when adding a case)."""
    assert KINDS == {"path": 4, "file": 18, "table": 6, "truncate": 8, "secret": 35}, KINDS
