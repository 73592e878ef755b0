"""Property-based fuzzing of recipe loading: every malformed recipe is a RecipeError, never a traceback.

Each malformed case goes through `load_recipe` and, when loading succeeds, `build_plan`; the
only exception allowed out is RecipeError, and every problem in it must be well formed (a JSON
pointer or "", a message, a hint that is None or text). The converse is tested too: recipes
drawn from the schema's own enums and ranges always load and plan.

Cases per run (derandomized, so CI sees the same ones every time): the `max_examples` below add
up to 1,080 malformed cases (250 wrong types, 200 unknown keys, 150 out-of-range numbers, 60
missing sections, 80 broken extends chains, 150 bad --set, 150 invalid JSON, 40 non-recipe files)
plus 100 valid recipes; `test_at_least_1000_malformed_recipes_ran` checks the count actually
run. The bugs this fuzzing found (unusable paths, deep JSON, huge --set integers, non-finite
numbers, a non-string extends, unescaped pointers) are fixed; their minimal inputs stay as
regression tests in the last section.
"""
from __future__ import annotations

import copy
import json
import re
import string
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ROOT, TINY_MODEL, write_json, write_jsonl
from runner.recipe import schema
from runner.errors import RecipeError, pointer
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.plan.tasks import TASKS, trained_format

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


CASES: Counter = Counter()  # malformed cases run, per test
MALFORMED_TESTS = ("wrong_type", "unknown_key", "out_of_range", "missing_required", "broken_extends",
                   "bad_set", "invalid_json", "not_a_recipe")

# --- a valid recipe that reaches every depth ------------------------------------------------

ROWS = [{"text": "a b", "prompt": "p", "completion": "c", "instruction": "i", "output": "o",
         "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
         "chosen": "y", "rejected": "n", "label": "pos"}] * 4  # one file that fits every format


def rich_recipe(data_dir: Path) -> dict:
    """Valid and plannable; nested objects, lists and nulls so that mutations reach every depth."""
    train, evals = str(data_dir / "train.jsonl"), str(data_dir / "eval.jsonl")
    return {
        "$schema": "../schemas/recipe.schema.json",
        "name": "fuzz",
        "description": "fuzz target",
        "task": "sft",
        "model": {"name_or_path": str(TINY_MODEL), "init": "random", "revision": "main", "tokenizer": None,
                  "dtype": "float32", "attn_implementation": "eager", "trust_remote_code": False,
                  "config_overrides": {"num_hidden_layers": 1},
                  "chat_template": str(TINY_MODEL / "chat_template.jinja")},
        "data": {"format": "prompt_completion", "train": {"path": train, "split": "train", "limit": 8},
                 "eval": {"path": evals, "limit": 4}, "eval_fraction": None,
                 "columns": {"prompt": "prompt", "completion": "completion"}, "labels": None},
        "peft": {"method": "lora", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                 "target_modules": ["q_proj", "v_proj"], "bias": "none"},
        "training": {"learning_rate": 1e-4, "max_steps": 2, "num_train_epochs": 1, "per_device_train_batch_size": 2,
                     "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64,
                     "save_strategy": "no", "save_total_limit": None, "logging_steps": 1, "eval_strategy": "steps",
                     "eval_steps": 1, "warmup_steps": 0.1, "weight_decay": 0.01, "adam_beta1": 0.9, "seed": 1,
                     "bf16": False, "fp16": False, "completion_only_loss": True, "packing": False,
                     "report_to": ["tensorboard"], "neftune_noise_alpha": None, "optim": "adamw_torch"},
        "output": {"dir": str(data_dir / "run"), "if_exists": "overwrite"},
        "evaluation": {"metrics": ["loss", "exact_match"], "max_examples": 4, "baseline": True,
                       "retention": {"path": evals},
                       "generation": {"max_new_tokens": 8, "do_sample": False, "top_p": 1.0, "num_beams": 1,
                                      "batch_size": 2}},
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Data files shared by every case (only their existence matters to the plan)."""
    path = tmp_path_factory.mktemp("fuzz_data")
    write_jsonl(path / "train.jsonl", ROWS)
    write_jsonl(path / "eval.jsonl", ROWS)
    return path


def test_the_rich_recipe_is_valid(data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        plan = build_plan(load_recipe(write_json(Path(tmp) / "r.json", rich_recipe(data_dir))))
    assert plan["peft"]["kwargs"]["target_modules"] == ["q_proj", "v_proj"]


# --- helpers --------------------------------------------------------------------------------


def rejected(path: Path, overrides=()) -> list:
    """The problems reported for a recipe that must not load and plan; any other exception fails the test."""
    try:
        build_plan(load_recipe(path, list(overrides)))
    except RecipeError as err:
        assert err.render()  # what the CLI prints
        problems = err.problems
    else:
        pytest.fail(f"accepted: {path.read_text(errors='replace')[:2000]} with --set {list(overrides)}")
    assert problems, "a RecipeError without problems"
    for problem in problems:
        assert isinstance(problem.path, str) and (problem.path == "" or problem.path.startswith("/")), problem
        assert isinstance(problem.message, str) and problem.message.strip(), problem
        assert problem.hint is None or (isinstance(problem.hint, str) and problem.hint.strip()), problem
    return problems


def reject_text(content: str | bytes, overrides=(), name: str = "recipe.json") -> list:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        write_jsonl(Path(tmp) / "train.jsonl", ROWS)  # for recipes naming a relative train.jsonl
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return rejected(path, overrides)


def reject_doc(doc: dict, overrides=()) -> list:
    return reject_text(json.dumps(doc, indent=2), overrides)


def paths_of(problems) -> set[str]:
    return {p.path for p in problems}


def at_or_above(problems, where: str) -> bool:
    """Some problem is reported at `where` or at an object or list that contains it."""
    return any(p.path == where or where.startswith(p.path + "/") for p in problems)


def walk(value, parts=()):
    """(parts, value) of every node below the root, depth first."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield parts + (key,), child
        yield from walk(child, parts + (key,))


def get_at(doc, parts):
    for part in parts:
        doc = doc[part]
    return doc


def set_at(doc, parts, value):
    get_at(doc, parts[:-1])[parts[-1]] = value


# --- what the schema accepts at a path --------------------------------------------------------

JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _children(sub: dict, part) -> list[dict]:
    """Subschemas a key (str) or list index (int) can meet below `sub`, in any branch."""
    sub = schema.resolve(sub)
    found = []
    if isinstance(part, int):
        found += [sub["items"]] if isinstance(sub.get("items"), dict) else []
    else:
        found += [sub["properties"][part]] if part in sub.get("properties", {}) else []
        found += [sub["additionalProperties"]] if isinstance(sub.get("additionalProperties"), dict) else []
    branches = sub.get("allOf", []) + sub.get("anyOf", []) + sub.get("oneOf", []) + [sub.get("then"), sub.get("else")]
    return found + [c for branch in branches if branch for c in _children(branch, part)]


def _own_types(sub: dict) -> set[str]:
    sub = schema.resolve(sub)
    types = set([sub["type"]] if isinstance(sub.get("type"), str) else sub.get("type", []))
    types |= {json_type(v) for v in sub.get("enum", [])}
    types |= {json_type(sub["const"])} if "const" in sub else set()
    for branch in sub.get("anyOf", []) + sub.get("oneOf", []):
        types |= _own_types(branch)
    return types


def accepted_types(parts) -> set[str]:
    """JSON types some branch of the schema accepts at `parts` (all of them where it says nothing)."""
    subs = [schema.load_schema()]
    for part in parts:
        subs = [c for s in subs for c in _children(s, part)]
    types = set()
    for sub in subs:
        types |= _own_types(sub) or set(JSON_TYPES)
    return types | ({"integer"} if "number" in types else set())


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-9, 9), st.text(max_size=4))
VALUES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(-10**6, 10**6),
    "number": st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer()),  # 2.0 would pass as an integer
    "string": st.text(max_size=12),
    "array": st.lists(SCALARS, max_size=3),
    "object": st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
}

# Every node of the rich recipe that some wrong type exists for (config_overrides values take any).
MUTABLE = [(parts, sorted(set(JSON_TYPES) - accepted_types(parts)))
           for parts, _ in walk(rich_recipe(Path("/data")))]
MUTABLE = [(parts, wrong) for parts, wrong in MUTABLE if wrong]


# --- wrong types at every depth ---------------------------------------------------------------


@st.composite
def wrong_type_mutations(draw):
    parts, wrong = draw(st.sampled_from(MUTABLE))
    value = draw(st.sampled_from(wrong).flatmap(lambda t: VALUES[t]))
    return parts, value


@fuzz(250)
@given(mutation=wrong_type_mutations())
def test_wrong_type_anywhere_is_reported_at_its_path(data_dir, mutation):
    parts, value = mutation
    doc = rich_recipe(data_dir)
    set_at(doc, parts, value)
    problems = reject_doc(doc)
    assert at_or_above(problems, pointer(parts)), (pointer(parts), value, problems)
    CASES["wrong_type"] += 1


# --- unknown and misspelt keys at every depth -------------------------------------------------

CONFIG_KEYS = sorted(json.loads((TINY_MODEL / "config.json").read_text()))
OBJECTS = [()] + [parts for parts, value in walk(rich_recipe(Path("/data"))) if isinstance(value, dict)]


def known_keys_at(parts) -> set[str]:
    if parts == ("model", "config_overrides"):
        return set(CONFIG_KEYS)  # any key passes the schema; the plan checks it against config.json
    return set(schema.keys_at(list(parts)))


def near_misses(word: str):
    """One typo away: a letter dropped, doubled, swapped, replaced or recased, or a separator changed."""
    at = st.integers(0, max(len(word) - 1, 0))
    letter = st.sampled_from(string.ascii_lowercase + "_-")
    return st.one_of(
        at.map(lambda i: word[:i] + word[i + 1:]),
        at.map(lambda i: word[:i] + word[i:i + 1] * 2 + word[i + 1:]),
        at.map(lambda i: word[:i] + word[i + 1:i + 2] + word[i:i + 1] + word[i + 2:]),
        st.tuples(at, letter).map(lambda t: word[:t[0]] + t[1] + word[t[0] + 1:]),
        at.map(lambda i: word[:i] + word[i:i + 1].swapcase() + word[i + 1:]),
        st.just(word.replace("_", "-") if "_" in word else word + "s"),
    )


# '/' and '~' under config_overrides are left out: see test_config_overrides_problem_path_is_escaped.
GARBAGE = st.text(min_size=1, max_size=16)


@st.composite
def unknown_key_insertions(draw):
    parts = draw(st.sampled_from(OBJECTS))
    doc = rich_recipe(Path("/data"))
    present = sorted(get_at(doc, parts))
    garbage = GARBAGE.filter(lambda k: "/" not in k and "~" not in k) if "config_overrides" in parts else GARBAGE
    key = draw(st.one_of(st.sampled_from(present).flatmap(near_misses), garbage))
    assume(key not in known_keys_at(parts))
    return parts, key, draw(SCALARS)


@fuzz(200)
@given(insertion=unknown_key_insertions())
def test_unknown_or_misspelt_key_anywhere_is_named(data_dir, insertion):
    parts, key, value = insertion
    doc = rich_recipe(data_dir)
    get_at(doc, parts)[key] = value
    problems = reject_doc(doc)
    assert pointer(parts + (key,)) in paths_of(problems), (pointer(parts + (key,)), problems)
    CASES["unknown_key"] += 1


# --- out-of-range numbers ---------------------------------------------------------------------


def ints(high):
    return st.integers(-10**6, high)


def floats(low=-1e6, high=1e6, **kw):
    return st.floats(low, high, **kw)


OUT_OF_RANGE = {
    ("training", "per_device_train_batch_size"): ints(0),
    ("training", "per_device_eval_batch_size"): ints(0),
    ("training", "gradient_accumulation_steps"): ints(0),
    ("training", "learning_rate"): floats(high=0.0),
    ("training", "max_steps"): st.one_of(st.just(0), ints(-2)),
    ("training", "num_train_epochs"): floats(high=0.0),
    ("training", "weight_decay"): floats(high=-1e-9),
    ("training", "adam_beta1"): st.one_of(floats(high=-1e-9), floats(1.0, 1e6)),
    ("training", "max_length"): ints(0),
    ("training", "seed"): ints(-1),
    ("training", "logging_steps"): st.one_of(ints(0), floats(high=0.0)),
    ("training", "eval_steps"): st.one_of(ints(0), floats(high=0.0)),
    ("training", "warmup_steps"): st.one_of(ints(-1), floats(high=-1e-9),
                                            floats(1.0, 1e6).filter(lambda x: not x.is_integer())),
    ("training", "save_total_limit"): ints(0),
    ("training", "neftune_noise_alpha"): floats(high=0.0),
    ("peft", "r"): ints(0),
    ("peft", "lora_alpha"): floats(high=0.0),
    ("peft", "lora_dropout"): st.one_of(floats(high=-1e-9), floats(1.0, 1e6, exclude_min=True)),
    ("data", "train", "limit"): ints(0),
    ("data", "eval", "limit"): ints(0),
    ("evaluation", "max_examples"): ints(0),
    ("evaluation", "generation", "max_new_tokens"): ints(0),
    ("evaluation", "generation", "top_p"): st.one_of(floats(high=0.0), floats(1.0, 1e6, exclude_min=True)),
    ("evaluation", "generation", "num_beams"): ints(0),
    ("evaluation", "generation", "batch_size"): ints(0),
}


@fuzz(150)
@given(case=st.sampled_from(sorted(OUT_OF_RANGE)).flatmap(lambda p: st.tuples(st.just(p), OUT_OF_RANGE[p])),
       eval_fraction=st.one_of(floats(high=0.0), floats(0.5, 1e6, exclude_min=True)))
def test_out_of_range_number_is_reported_at_its_path(data_dir, case, eval_fraction):
    parts, value = case
    doc = rich_recipe(data_dir)
    set_at(doc, parts, value)
    problems = reject_doc(doc)
    assert pointer(parts) in paths_of(problems), (pointer(parts), value, problems)
    doc = rich_recipe(data_dir)  # data.eval_fraction: only without data.eval
    doc["data"].update(eval=None, eval_fraction=eval_fraction)
    assert "/data/eval_fraction" in paths_of(reject_doc(doc))
    CASES["out_of_range"] += 1


# --- missing required sections ----------------------------------------------------------------

REQUIRED = [("name",), ("model",), ("data",), ("data", "train"), ("model", "name_or_path"), ("peft", "method")]


@fuzz(60)
@given(removed=st.sets(st.sampled_from(REQUIRED), min_size=1))
def test_missing_required_sections_are_each_named(data_dir, removed):
    doc = rich_recipe(data_dir)
    for parts in sorted(removed, key=len, reverse=True):
        del get_at(doc, parts[:-1])[parts[-1]]
    problems = reject_doc(doc)
    missing = {(p.path, p.message) for p in problems}
    for parts in removed:
        if parts[:-1] and parts[:-1] in removed:
            continue  # its section is gone with it
        assert (pointer(parts), "missing (required)") in missing, (parts, problems)
    CASES["missing_required"] += 1


# --- broken extends chains --------------------------------------------------------------------


def spell(path: Path, spelling: str) -> str:
    """A way of naming a sibling file in `extends`."""
    return {"plain": path.name, "dotted": f"./{path.name}", "absolute": str(path),
            "detour": f"../{path.parent.name}/{path.name}"}[spelling]


SPELLINGS = st.sampled_from(["plain", "dotted", "absolute", "detour"])


@st.composite
def broken_chains(draw):
    """(kind, files before the break, cycle length (0: a missing file), spellings, fragments, missing name)."""
    kind = draw(st.sampled_from(["missing", "cycle"]))
    prefix = draw(st.integers(0, 2))
    cycle = draw(st.integers(1, 3)) if kind == "cycle" else 0
    count = prefix + cycle
    spellings = draw(st.lists(SPELLINGS, min_size=count + 1, max_size=count + 1))
    fragments = draw(st.lists(st.sampled_from(["name", "model", "data", "training", "peft"]),
                              min_size=count + 1, max_size=count + 1))
    missing = draw(st.sampled_from(["nowhere.json", "sub/nowhere.json", ".", "nowhere"]))
    return kind, prefix, cycle, spellings, fragments, missing


@fuzz(80)
@given(chain=broken_chains())
def test_broken_extends_chain_is_reported_at_extends(data_dir, chain):
    kind, prefix, cycle, spellings, fragments, missing = chain
    full = rich_recipe(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"r{i}.json" for i in range(prefix + cycle)]
        for i, path in enumerate(files):
            if kind == "cycle":  # the last file points back into the cycle
                target = files[i + 1] if i + 1 < len(files) else files[prefix]
                parent = spell(target, spellings[i])
            else:
                parent = spell(files[i + 1], spellings[i]) if i + 1 < len(files) else missing
            write_json(path, {"extends": parent, fragments[i]: full[fragments[i]]})
        entry = files[0] if files else write_json(Path(tmp) / "entry.json", {"extends": missing})
        problems = rejected(entry)
    word = "cycle" if kind == "cycle" else "file not found"
    assert any(p.path == "/extends" and word in p.message for p in problems), problems
    CASES["broken_extends"] += 1


# --- bad --set expressions --------------------------------------------------------------------

SEGMENT = st.text(st.characters(exclude_characters=".=", exclude_categories=("Cs", "Z", "Cc")), min_size=1,
                  max_size=12)
DOTTED = sorted({".".join(map(str, parts[:i])) for parts, _ in walk(rich_recipe(Path("/data")))
                 for i in range(len(parts) + 1)
                 if not any(isinstance(p, int) for p in parts[:i]) and "config_overrides" not in parts[:i]})
# Leaf keys --set can give a wrong value: the value is read as JSON unless only a string fits.
TYPED_LEAVES = [(parts, sorted(set(JSON_TYPES) - accepted_types(parts))) for parts, value in
                walk(rich_recipe(Path("/data"))) if not isinstance(value, (dict, list))
                and "string" not in accepted_types(parts) and not any(isinstance(p, int) for p in parts)]
ENUM_LEAVES = [parts for parts, value in walk(rich_recipe(Path("/data"))) if isinstance(value, str)
               and all(isinstance(p, str) for p in parts) and accepted_types(parts) == {"string"}
               and "enum" in schema.subschemas_at(list(parts))[0]]


@st.composite
def no_equals(draw):
    text = draw(st.text(max_size=20).filter(lambda t: "=" not in t))
    return text, lambda problems: any(p.path == "" and "expected KEY=VALUE" in p.message for p in problems)


@st.composite
def empty_segment(draw):
    key = draw(st.sampled_from(["", " ", ".", "training.", ".seed", "training..seed", "model..dtype"]))
    return f"{key}={draw(st.text(max_size=5))}", \
        lambda problems: any(p.path == "" and "expected KEY=VALUE" in p.message for p in problems)


@st.composite
def unknown_dotted_key(draw):
    prefix = [p for p in draw(st.sampled_from(DOTTED)).split(".") if p]
    known = schema.keys_at(prefix)
    word = draw(st.one_of(st.sampled_from(known).flatmap(near_misses), SEGMENT) if known else SEGMENT)
    assume(word and not schema.subschemas_at(prefix + [word]))
    tail = draw(st.lists(SEGMENT, max_size=2))
    where = pointer(prefix + [word])
    return f"{'.'.join(prefix + [word] + tail)}={draw(st.text(max_size=6))}", \
        lambda problems: any(p.path == where and p.message.startswith("unknown key") for p in problems)


@st.composite
def wrong_value(draw):
    parts, wrong = draw(st.sampled_from(TYPED_LEAVES))
    kind = draw(st.sampled_from(wrong))
    if kind == "string":  # a bare word is kept as text
        raw = draw(st.text(string.ascii_letters, min_size=1, max_size=8).filter(
            lambda w: w not in ("true", "false", "null", "NaN", "Infinity")))
    else:
        raw = json.dumps(draw(VALUES[kind]))
    where = pointer(parts)
    return f"{'.'.join(parts)}={raw}", lambda problems: at_or_above(problems, where)


@st.composite
def wrong_enum_value(draw):
    parts = draw(st.sampled_from(ENUM_LEAVES))
    allowed = schema.subschemas_at(list(parts))[0]["enum"]
    raw = draw(st.text(max_size=10).filter(lambda t: t not in allowed))
    where = pointer(parts)
    return f"{'.'.join(parts)}={raw}", lambda problems: any(p.path == where for p in problems)


@st.composite
def override_extends(draw):
    return f"extends={draw(st.text(max_size=10))}", \
        lambda problems: any(p.path == "/extends" and "cannot be overridden" in p.message for p in problems)


@fuzz(150)
@given(bad=st.one_of(no_equals(), empty_segment(), unknown_dotted_key(), wrong_value(), wrong_enum_value(),
                     override_extends()),
       before=st.booleans(), after=st.booleans())
def test_bad_set_expression_is_reported(data_dir, bad, before, after):
    text, expected = bad
    # harmless overrides around it, on keys no bad override sets
    overrides = ["evaluation.baseline=false"] * before + [text] + ["description=set last"] * after
    with tempfile.TemporaryDirectory() as tmp:
        problems = rejected(write_json(Path(tmp) / "r.json", rich_recipe(data_dir)), overrides)
    assert expected(problems), (text, problems)
    CASES["bad_set"] += 1


# --- invalid JSON text ------------------------------------------------------------------------

STRUCTURAL = '{}[],:"'


@st.composite
def corrupted_texts(draw, text: str):
    """Truncated, or one to three structural characters deleted, replaced or inserted."""
    if draw(st.booleans()):
        return text[: draw(st.integers(0, len(text) - 1))]
    for _ in range(draw(st.integers(1, 3))):
        spots = [i for i, c in enumerate(text) if c in STRUCTURAL]
        i = draw(st.sampled_from(spots))
        new = draw(st.sampled_from(STRUCTURAL + "x\\ \n"))
        text = draw(st.sampled_from([text[:i] + text[i + 1:], text[:i] + new + text[i + 1:],
                                     text[:i] + new + text[i:]]))
    return text


VALID_TEXT = json.dumps(rich_recipe(Path("/data")), indent=2)


@fuzz(150)
@given(text=corrupted_texts(VALID_TEXT))
def test_invalid_json_names_line_and_column(text):
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
    else:
        assume(False)  # the corruption left valid JSON
    problems = reject_text(text)
    assert [(p.path, where in p.message) for p in problems] == [("", True)], (where, problems)
    CASES["invalid_json"] += 1


@fuzz(40)
@given(content=st.one_of(
    st.one_of(SCALARS, st.lists(SCALARS, max_size=3)).map(json.dumps),
    st.binary(min_size=1, max_size=12).map(lambda b: b'{"name": "' + b"\xff" + b + b'"}'),
    st.text(" \t\r\n", max_size=4),
))
def test_text_that_is_not_a_recipe_object_is_a_whole_file_problem(content):
    problems = reject_text(content)
    assert paths_of(problems) == {""}, problems
    CASES["not_a_recipe"] += 1


# --- the converse: valid recipes drawn from the schema load and plan --------------------------

DEFS = schema.load_schema()["$defs"]
NAME_PATTERN = schema.load_schema()["properties"]["name"]["pattern"]
NOISE = ("description", "default", "examples", "x-message", "x-path", "anyOf", "oneOf")


def from_schema(sub: dict):
    """A strategy for values valid under a (simple) subschema: enums, consts, bounded numbers, lists."""
    sub = schema.resolve(sub)
    branches = sub.get("anyOf", []) + sub.get("oneOf", [])
    if branches:
        rest = {k: v for k, v in sub.items() if k not in NOISE}
        return st.one_of([from_schema({**rest, **schema.resolve(b)}) for b in branches])
    if "const" in sub:
        return st.just(sub["const"])
    if "enum" in sub:
        return st.sampled_from(sub["enum"])
    types = [sub["type"]] if isinstance(sub["type"], str) else sub["type"]
    return st.one_of([_typed_values(sub, t) for t in types]).filter(lambda v: schema.is_valid(v, sub))


def _typed_values(sub: dict, kind: str):
    low = sub.get("minimum", sub.get("exclusiveMinimum", -1e6))
    high = sub.get("maximum", sub.get("exclusiveMaximum", 1e6))
    if kind == "integer":
        return st.integers(int(low) + ("exclusiveMinimum" in sub), min(int(high), int(low) + 10**4))
    if kind == "number":
        return st.floats(low, high, exclude_min="exclusiveMinimum" in sub, exclude_max="exclusiveMaximum" in sub)
    if kind == "array":
        return st.lists(from_schema(sub["items"]), min_size=sub.get("minItems", 0), max_size=sub.get("minItems", 0) + 2,
                        unique=sub.get("uniqueItems", False))
    return {"null": st.none(), "boolean": st.booleans(), "string": st.text(string.ascii_letters, max_size=8)}[kind]


def training_fields(task: str) -> dict:
    """The training keys of `task`: the shared ones and its own section, as the schema's task branch names it."""
    (ref,) = [part["then"]["properties"]["training"]["$ref"] for part in schema.load_schema()["allOf"]
              if part["if"]["properties"]["task"]["const"] == task]
    return {**DEFS["training_common"]["properties"], **DEFS[ref.split("/")[-1]]["properties"]}


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_FIELDS = {k: v for k, v in DEFS["lora"]["properties"].items() if k != "target_modules"}
TRAINABLE = ["head", "lm_head", r"model\.layers\.0\.", r"\.mlp\.", "norm$"]


@st.composite
def valid_recipes(draw, data_dir: Path):
    task = draw(st.sampled_from(sorted(TASKS)))
    fmt = draw(st.sampled_from(list(TASKS[task].formats)))
    training = draw(st.fixed_dictionaries({}, optional={k: from_schema(v) for k, v in training_fields(task).items()}))
    eval_source = draw(st.sampled_from(["none", "file", "fraction"]))
    data = {"format": draw(st.sampled_from([fmt, None] if fmt == next(iter(TASKS[task].formats)) else [fmt])),
            "train": {"path": str(data_dir / "train.jsonl"),
                      **draw(st.fixed_dictionaries({}, optional={"limit": st.integers(1, 100)}))}}
    if eval_source == "file":
        data["eval"] = {"path": str(data_dir / "eval.jsonl")}
    elif eval_source == "fraction":
        data["eval_fraction"] = draw(from_schema(DEFS["data"]["properties"]["eval_fraction"]).filter(bool))
    if fmt == "labelled":
        data["labels"] = draw(st.one_of(st.none(), st.just(["neg", "pos"])))
    fix_cross_field_rules(training, task, fmt, has_eval=eval_source != "none")
    rewards = {"rewards": [{"type": "exact_match"}]} if TASKS[task].rewarded else {}
    return {
        **rewards,
        "name": draw(st.from_regex(NAME_PATTERN, fullmatch=True)),
        "task": task,
        "model": {"name_or_path": str(TINY_MODEL), "init": "random",
                  "dtype": draw(from_schema(DEFS["model"]["properties"]["dtype"])),
                  "attn_implementation": draw(from_schema(DEFS["model"]["properties"]["attn_implementation"])),
                  **draw(st.fixed_dictionaries({}, optional={"config_overrides": st.fixed_dictionaries(
                      {"num_hidden_layers": st.integers(1, 3)})}))},
        "data": data,
        "peft": fix_method_rules(draw(peft_sections()), training),
        "training": training,
        "output": {"dir": str(data_dir / "runs" / "valid")},
        "evaluation": {"baseline": eval_source != "none" and draw(st.booleans())},
    }


def fix_cross_field_rules(training: dict, task: str, fmt: str, has_eval: bool) -> None:
    """Undo the combinations `plan.check_training` refuses (each is tested as a mistake in test_plan)."""
    if training.get("bf16") and training.get("fp16"):
        training["fp16"] = False
    if training.get("packing") and training.get("max_length", 1) is None:
        training["max_length"] = 64
    for key, only in TASKS[task].format_only_options.items():
        if training.get(key) and trained_format(TASKS[task], fmt) != only:
            training[key] = None
    if not has_eval:
        training.update(eval_strategy="no", eval_on_start=False)
    if task == "distill":  # the teacher is required: the tiny model's own directory (checked, never loaded here)
        training["teacher_model_name_or_path"] = str(TINY_MODEL)
    if TASKS[task].rewarded:  # the generation batch in whole groups, evaluated in whole groups (TRL's rules)
        training.update(generation_batch_size=None, steps_per_generation=None, num_generations_eval=None, beta=0.0)
        training["num_generations"] = 2
        training["per_device_train_batch_size"] = 2 * training.get("per_device_train_batch_size", 4)
        training["per_device_eval_batch_size"] = 2 * training.get("per_device_eval_batch_size", 8)


def fix_method_rules(peft: dict, training: dict) -> dict:
    """Undo the combinations `methods.check_methods` refuses (tested as mistakes in test_methods)."""
    if peft["method"] in ("prompt_tuning", "prefix_tuning"):
        for key in ("packing", "padding_free"):
            if training.get(key):
                training[key] = False
    if peft["method"] == "prefix_tuning" and training.get("activation_checkpointing"):
        training["activation_checkpointing"] = False
    return peft


@st.composite
def peft_sections(draw):
    method = draw(st.sampled_from(DEFS["peft"]["properties"]["method"]["enum"]))
    if method == "lora":
        fields = draw(st.fixed_dictionaries({}, optional={k: from_schema(v) for k, v in LORA_FIELDS.items()}))
        targets = draw(st.one_of(st.just("all-linear"), st.lists(st.sampled_from(LINEAR), min_size=1, unique=True)))
        return {"method": "lora", "target_modules": targets, **fields}
    if method == "partial":
        return {"method": "partial", "trainable": draw(st.lists(st.sampled_from(TRAINABLE), min_size=1, unique=True))}
    if method == "prompt_tuning":
        text = draw(st.one_of(st.none(), st.text(min_size=1, max_size=20)))
        return {"method": method, "num_virtual_tokens": draw(st.integers(1, 32)),
                "prompt_tuning_init": "TEXT" if text else "RANDOM", "prompt_tuning_init_text": text}
    if method == "prefix_tuning":
        return {"method": method, "prefix_projection": draw(st.booleans())}
    if method == "ia3":
        targets = draw(st.one_of(st.none(), st.lists(st.sampled_from(LINEAR), min_size=1, unique=True)))
        return {"method": method, "target_modules": targets,
                "feedforward_modules": None if targets is None else [t for t in targets if t == "down_proj"]}
    return {"method": "none"}


@fuzz(100)
@given(data=st.data())
def test_valid_recipes_from_the_schema_load_and_plan(data_dir, data):
    doc = data.draw(valid_recipes(data_dir))
    with tempfile.TemporaryDirectory() as tmp:
        plan = build_plan(load_recipe(write_json(Path(tmp) / "r.json", doc)))
    assert plan["task"] == doc["task"]
    for key, value in doc["training"].items():
        assert plan["recipe"]["training"][key] == value, key
    batch = plan["batch"]
    assert batch["examples_per_step_per_process"] == \
        batch["per_device_train_batch_size"] * batch["gradient_accumulation_steps"]
    if doc["peft"]["method"] == "lora":
        assert plan["peft"]["kwargs"]["target_modules"] == doc["peft"]["target_modules"]


# --- the command line: many malformed recipes, one report each, no traceback ----------------


def cli_cases(tmp: Path, data_dir: Path) -> list[Path]:
    """About twenty malformed recipes, schema- and plan-level, written into `tmp`."""
    good = rich_recipe(data_dir)
    text = json.dumps(good, indent=2)

    def variant(**changes):
        doc = copy.deepcopy(good)
        for dotted, value in changes.items():
            parts = dotted.split("__")
            if value is KeyError:
                del get_at(doc, parts[:-1])[parts[-1]]
            else:
                set_at(doc, parts, value)
        return json.dumps(doc, indent=2)

    cases = {
        "unknown_top_key": variant(modle={}),
        "misspelt_training_key": variant(training__learnig_rate=1e-4),
        "wrong_type_batch": variant(training__per_device_train_batch_size="8"),
        "negative_batch": variant(training__per_device_train_batch_size=-1),
        "learning_rate_zero": variant(training__learning_rate=0),
        "dropout_above_one": variant(peft__lora_dropout=1.5),
        "missing_model": variant(model=KeyError),
        "missing_name_or_path": variant(model__name_or_path=KeyError),
        "missing_train": variant(data__train=KeyError),
        "extends_missing": json.dumps({"extends": "nowhere.json", "name": "x"}),
        "cycle_a": json.dumps({"extends": "cycle_b.json"}),
        "truncated": text[: len(text) // 2],
        "corrupted": text.replace(":", ";", 3),
        "empty": "",
        "not_an_object": "[1, 2]",
        "nan": text.replace('"learning_rate": 0.0001', '"learning_rate": NaN'),
        "duplicate_key": text.replace('"name": "fuzz",', '"name": "fuzz", "name": "again",'),
        "plan_missing_data_file": variant(data__train__path=str(tmp / "absent.jsonl")),
        "plan_bf16_and_fp16": variant(training__bf16=True, training__fp16=True),
        "plan_eval_without_data": variant(data__eval=None, evaluation__baseline=False),
    }
    paths = []
    for name, content in cases.items():
        paths.append(tmp / f"{name}.json")
        paths[-1].write_text(content)
    write_json(tmp / "cycle_b.json", {"extends": "cycle_a.json"})
    (tmp / "not_utf8.json").write_bytes(b'{"name": "\xff"}')
    (tmp / "a_directory.json").mkdir()
    return paths + [tmp / "not_utf8.json", tmp / "a_directory.json", tmp / "not_there.json"]


def test_cli_validate_reports_each_malformed_recipe_once_without_traceback(tmp_path, data_dir):
    paths = cli_cases(tmp_path, data_dir)
    result = subprocess.run([sys.executable, "-m", "runner", "validate", *map(str, paths)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "ok:" not in result.stdout
    lines = result.stderr.splitlines()
    header = re.compile(r"(?P<source>\S.*): \d+ problems?")
    heads = [(i, m["source"]) for i, line in enumerate(lines) if (m := header.fullmatch(line))]
    assert len(heads) == len(paths), result.stderr  # one report block per file, in the order given
    for (i, source), path in zip(heads, paths):
        # a broken chain is reported against the file whose `extends` is wrong
        named = tmp_path / "cycle_b.json" if path.name == "cycle_a.json" else path
        assert source in (str(named), str(named.resolve())), (source, path)
        assert lines[i + 1].startswith("  /"), result.stderr


# --- regressions: minimal inputs the fuzzing once found escaping as tracebacks or passing silently ---

BASE = {"name": "t", "model": {"name_or_path": str(TINY_MODEL), "init": "random"},
        "data": {"train": {"path": "train.jsonl"}}}


def with_(section: str, **values) -> str:
    doc = copy.deepcopy(BASE)
    doc[section] = {**doc.get(section, {}), **values}
    return json.dumps(doc)


def bug(reason: str, raises=None):
    """What the fuzzing found (kept as documentation of each case); fixed, so no mark applies."""
    return ()


PATHLIB = "recipe.resolve_one: pathlib's OSError/RuntimeError/ValueError escape as tracebacks"


@pytest.mark.parametrize("text, overrides", [
    pytest.param(with_("model", name_or_path="x" * 256), (), marks=bug(PATHLIB, OSError),
                 id="name_or_path-too-long"),
    pytest.param(with_("model", name_or_path="~nosuchuser/m"), (),
                 marks=bug(PATHLIB, RuntimeError), id="name_or_path-tilde-user"),
    pytest.param(with_("model", name_or_path="a\u0000b"), (), marks=bug(PATHLIB, ValueError),
                 id="name_or_path-nul"),
    pytest.param(with_("data", train={"path": "/" + "x" * 256 + ".jsonl"}), (),
                 marks=bug("plan_eval.check_source: Path.is_file() raises 'File name too long'", OSError),
                 id="data-path-too-long"),
    pytest.param(json.dumps({**BASE, "extends": "~nosuchuser/b.json"}), (),
                 marks=bug(PATHLIB, RuntimeError), id="extends-tilde-user"),
    pytest.param(with_("output", dir="~nosuchuser/run"), (),
                 marks=bug("plan.resolve_output_dir: Path.expanduser() raises", RuntimeError),
                 id="output-dir-tilde-user"),
    pytest.param(json.dumps(BASE), ("model.name_or_path=~nosuchuser/m",),
                 marks=bug(PATHLIB, RuntimeError), id="set-tilde-user"),
    pytest.param("[" * 100_000, (), id="deeply-nested-json",
                 marks=bug("recipe.read_json: json.loads' RecursionError is not caught", RecursionError)),
    pytest.param(json.dumps(BASE), ("training.seed=1" + "0" * 5000,),
                 marks=bug("recipe._typed: json.loads' ValueError (int digit limit) is not caught", ValueError),
                 id="set-huge-integer"),
])
def test_known_crash_is_a_recipe_error(text, overrides):
    reject_text(text, overrides)


@pytest.mark.parametrize("text, overrides, where", [
    pytest.param(json.dumps({**BASE, "extends": ["base.json"]}), (), "/extends",
                 marks=bug("recipe.load_recipe pops a non-string extends before validation: silently ignored"),
                 id="extends-not-a-string"),
    pytest.param(json.dumps(BASE), ("training.learning_rate=NaN",), "/training/learning_rate",
                 marks=bug("recipe._typed accepts NaN/Infinity that read_json refuses; the schema lets NaN pass"),
                 id="set-nan"),
    pytest.param(json.dumps(BASE), ("training.learning_rate=Infinity",), "/training/learning_rate",
                 marks=bug("recipe._typed accepts Infinity"), id="set-infinity"),
    pytest.param(with_("training", learning_rate=0.1).replace("0.1", "1e999"), (), "/training/learning_rate",
                 marks=bug("read_json: 1e999 overflows to inf without parse_constant seeing it"), id="overflow-to-inf"),
])
def test_known_silent_acceptance_is_a_recipe_error(text, overrides, where):
    assert where in paths_of(reject_text(text, overrides))


def test_config_overrides_problem_path_is_escaped():
    problems = reject_text(with_("model", config_overrides={"a/b": 1}))
    assert "/model/config_overrides/a~1b" in paths_of(problems)


# --- the count ------------------------------------------------------------------------------


def test_at_least_1000_malformed_recipes_ran():
    if set(CASES) != set(MALFORMED_TESTS):
        pytest.skip("only counts when the whole file runs")
    assert sum(CASES.values()) >= 1000, dict(CASES)
