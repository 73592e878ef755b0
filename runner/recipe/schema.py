"""The recipe schema: loading it, validating against it, filling its defaults, looking keys up.

`schemas/recipe.schema.json` is the single source of truth for fields, types, defaults and
descriptions; nothing in the code repeats a default. Only jsonschema is imported here, so
`validate` and `plan` stay fast.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from runner.errors import Problem, did_you_mean, pointer

SCHEMA_NAME = "recipe.schema.json"


def schema_path() -> Path:
    """The schema file: inside the installed package, else in the source tree's `schemas/`."""
    packaged = Path(__file__).parents[1] / "schemas" / SCHEMA_NAME
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_NAME


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(schema_path().read_text())


@functools.lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema())


def resolve(sub: dict) -> dict:
    """Follow a local `$ref`, keeping sibling keywords (a `description` or `default` beside it)."""
    if "$ref" not in sub:
        return sub
    target = load_schema()
    for part in sub["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(resolve(target))
    merged.update({k: v for k, v in sub.items() if k != "$ref"})
    return merged


def is_valid(instance, sub: dict) -> bool:
    return _validator().evolve(schema=_with_defs(sub)).is_valid(instance)


def _with_defs(sub: dict) -> dict:
    return {**sub, "$defs": load_schema()["$defs"]}


# Keywords whose generic wording says little; a subschema's `x-message` replaces it.
CUSTOMISABLE = ("pattern", "not")

# --- validation -----------------------------------------------------------------------------


def validate(doc: dict) -> list[Problem]:
    """Every problem in the recipe, each with its JSON path, sorted by path."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(doc):
        problems.extend(_translate(error))
    unique = {(p.path, p.message): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.path, p.message))


def _translate(error) -> list[Problem]:
    path = list(error.absolute_path)
    where = pointer(path)
    kind, value, inst = error.validator, error.validator_value, error.instance
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if kind in ("anyOf", "oneOf"):
        return _translate_branches(error, where, custom)
    if custom and kind in CUSTOMISABLE:
        return [Problem(where, _with_value(inst, custom))]
    if kind == "additionalProperties":
        known = error.schema.get("properties", {})
        unknown = [key for key in inst if key not in known]
        return [_unknown_key(path, key, known) for key in unknown[:SHOWN_UNKNOWN]] + _more_unknown(path, unknown)
    if kind == "unevaluatedProperties":
        return _unevaluated(path, inst, error.schema)
    if kind == "required":
        return [Problem(pointer(path + [k]), "missing (required)") for k in value if k not in inst]
    if kind == "type":
        return [Problem(where, f"{_show(inst)} is not {_type_phrase(value)}")]
    if kind == "enum":
        return [Problem(where, f"{_show(inst)} is not one of {_choices(value)}", did_you_mean(inst, value))]
    if kind == "const":
        return [Problem(where, f"{_show(inst)} must be {_show(value)}")]
    return [Problem(where, _bound_message(kind, value, inst) or error.message)]


def _translate_branches(error, where: str, custom: str | None) -> list[Problem]:
    """anyOf/oneOf: where the value is an object of the one branch its type fits, report inside it."""
    by_branch: dict[int, list] = {}
    for sub in error.context:
        by_branch.setdefault(sub.schema_path[0], []).append(sub)
    fitting = [
        (index, errs) for index, errs in by_branch.items()
        if not any(e.validator == "type" and e.absolute_path == error.absolute_path for e in errs)
    ]
    if custom:
        return [Problem(where, _with_value(error.instance, custom))]
    branch = resolve(error.validator_value[fitting[0][0]]) if len(fitting) == 1 else {}
    if "properties" in branch or "items" in branch:  # an object or a list (of sources): say what is wrong inside
        return [p for e in fitting[0][1] for p in _translate(e)]
    options = [_describe(resolve(b)) for b in error.validator_value]
    return [Problem(where, f"{_show(error.instance)} is not {' or '.join(options)}")]


def _with_value(inst, message: str) -> str:
    """Prefix a scalar value to its message; objects and lists would only be noise."""
    return message if isinstance(inst, (dict, list)) else f"{_show(inst)}: {message}"


def _describe(sub: dict) -> str:
    if "const" in sub:
        return _show(sub["const"])
    if "enum" in sub:
        return "one of " + _choices(sub["enum"])
    if "type" in sub:
        return _type_phrase(sub["type"])
    return "valid here"


SHOWN_UNKNOWN = 20  # per object: a file of thousands of stray keys is reported at once, not key by key


def _more_unknown(path: list, unknown: list) -> list[Problem]:
    if len(unknown) <= SHOWN_UNKNOWN:
        return []
    return [Problem(pointer(path), f"{len(unknown) - SHOWN_UNKNOWN:,} more unknown keys (not listed)",
                    "is this file a recipe? see `python -m runner docs` for the keys each section takes")]


def _unknown_key(path: list, key: str, known) -> Problem:
    hint = did_you_mean(key, known) or ("valid keys: " + ", ".join(sorted(known)) if known else None)
    return Problem(pointer(path + [key]), "unknown key", hint)


def _unevaluated(path: list, inst: dict, sub: dict) -> list[Problem]:
    """Keys a discriminated object (e.g. `peft` by `method`) does not allow in its chosen branch."""
    allowed = set(known_keys(sub, inst))
    problems, unknown = [], [key for key in inst if key not in allowed]
    for key in unknown[:SHOWN_UNKNOWN]:
        owners = _branch_owners(sub, key) or _sibling_owners(path, key)
        if owners:
            disc, values = owners
            current = f", not {_show(inst[disc])}" if disc in inst else ""
            hint = f"'{key}' belongs to {disc} {_choices(values)}{current}"
            problems.append(Problem(pointer(path + [key]), "not allowed here", hint))
        else:
            problems.append(_unknown_key(path, key, sorted(allowed)))
    return problems + _more_unknown(path, unknown)


def known_keys(sub: dict, instance: dict | None = None) -> list[str]:
    """Property names `sub` allows for `instance` (every branch's when instance is None)."""
    sub = resolve(sub)
    keys = list(sub.get("properties", {}))
    for part in sub.get("allOf", []):
        keys += known_keys(part, instance)
    if "if" in sub:
        take_then = instance is None or is_valid(instance, sub["if"])
        branch = sub.get("then") if take_then else sub.get("else")
        if branch:
            keys += known_keys(branch, instance)
        if instance is None and sub.get("else"):
            keys += known_keys(sub["else"], None)
    return keys


def _branch_owners(sub: dict, key: str):
    """(discriminator, values) of the if/then branches that define `key`, e.g. ('method', ['lora'])."""
    for part in resolve(sub).get("allOf", []):
        if "if" in part and key in known_keys(part["then"]):
            (disc, cond), = part["if"]["properties"].items()
            return disc, [cond["const"]]
    return None


def _sibling_owners(path: list, key: str):
    """For a top-level section closed per task (`training`): ('task', [tasks whose section has `key`])."""
    if len(path) != 1:
        return None
    owners = []
    for part in load_schema().get("allOf", []):
        section = part.get("then", {}).get("properties", {}).get(path[0])
        if section and key in known_keys(section):
            owners.append(part["if"]["properties"]["task"]["const"])
    return ("task", owners) if owners else None


def _bound_message(kind: str, value, inst) -> str | None:
    return {
        "minimum": f"{_show(inst)} is less than the minimum {value}",
        "maximum": f"{_show(inst)} is more than the maximum {value}",
        "exclusiveMinimum": f"{_show(inst)} must be greater than {value}",
        "exclusiveMaximum": f"{_show(inst)} must be less than {value}",
        "minLength": "must not be empty",
        "minItems": "must not be empty",
        "uniqueItems": "has repeated items",
        "pattern": f"{_show(inst)} does not match the pattern {value}",
    }.get(kind)


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _choices(values) -> str:
    return "[" + ", ".join(_show(v) for v in values) + "]"


def _type_phrase(types) -> str:
    names = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
             "object": "an object", "array": "a list", "null": "null"}
    types = [types] if isinstance(types, str) else types
    return " or ".join(names.get(t, t) for t in types)


# --- defaults -------------------------------------------------------------------------------


def fill_defaults(doc: dict) -> dict:
    """A copy of a valid recipe with every missing key that has a schema default filled in."""
    filled = copy.deepcopy(doc)
    _fill(filled, load_schema())
    return filled


def defaults_of(section: str) -> dict:
    """The schema's defaults for a section of $defs (e.g. "lora"): what a recipe gets when it names only the method."""
    props = {key: resolve(prop) for key, prop in load_schema()["$defs"][section]["properties"].items()}
    return {key: copy.deepcopy(prop["default"]) for key, prop in props.items() if "default" in prop}


def _fill(instance, sub: dict) -> None:
    sub = resolve(sub)
    for branch in sub.get("anyOf", []) + sub.get("oneOf", []):
        if is_valid(instance, branch):
            _fill(instance, branch)
            break
    if isinstance(instance, list) and "items" in sub:
        for item in instance:
            _fill(item, sub["items"])
    if not isinstance(instance, dict):
        return
    for key, prop in sub.get("properties", {}).items():
        prop = resolve(prop)
        if key not in instance and "default" in prop:
            instance[key] = copy.deepcopy(prop["default"])
        if key in instance:
            _fill(instance[key], prop)
    for part in sub.get("allOf", []):
        _fill(instance, part)
    if "if" in sub:
        branch = sub.get("then") if is_valid(instance, sub["if"]) else sub.get("else")
        if branch:
            _fill(instance, branch)


# --- lookups --------------------------------------------------------------------------------


def subschemas_at(parts: list[str]) -> list[dict]:
    """Every subschema a dotted key can name (several where branches differ); [] if none."""
    current = [load_schema()]
    for part in parts:
        current = [resolve(p) for s in current for p in _property_candidates(s, part)]
        if not current:
            return []
    return current


def _property_candidates(sub: dict, key: str) -> list[dict]:
    sub = resolve(sub)
    found = [sub["properties"][key]] if key in sub.get("properties", {}) else []
    if str(key).isdigit() and "items" in sub:  # a list's item (a source of a mixture)
        found.append(sub["items"])
    for branch in sub.get("allOf", []) + sub.get("anyOf", []) + sub.get("oneOf", []):
        found += _property_candidates(branch, key)
    for branch in (sub.get("then"), sub.get("else")):
        if branch:
            found += _property_candidates(branch, key)
    if isinstance(sub.get("additionalProperties"), dict):
        found.append(sub["additionalProperties"])
    return found


def keys_at(parts: list[str]) -> list[str]:
    """Property names available under a dotted key (for 'did you mean' hints)."""
    names: list[str] = []
    for sub in subschemas_at(parts):
        names += known_keys(sub)
        for branch in sub.get("anyOf", []) + sub.get("oneOf", []):
            names += known_keys(branch)
    return sorted(set(names))


@functools.lru_cache(maxsize=1)
def path_fields() -> tuple[tuple[tuple[str, ...], str], ...]:
    """(key path, kind) of every field marked `x-path` ("local" or "local-or-hub"); "*" in a key path stands for
    every item of a list (the sources of a mixture)."""
    found: list = []

    def walk(sub: dict, parts: tuple[str, ...], depth: int) -> None:
        sub = resolve(sub)
        if "x-path" in sub:
            found.append((parts, sub["x-path"]))
        if depth > 8:
            return
        for key, prop in sub.get("properties", {}).items():
            walk(prop, parts + (key,), depth + 1)
        for branch in sub.get("allOf", []) + sub.get("anyOf", []) + sub.get("oneOf", []):
            walk(branch, parts, depth + 1)
        if "items" in sub:
            walk(sub["items"], parts + ("*",), depth + 1)
        if "then" in sub:
            walk(sub["then"], parts, depth + 1)

    walk(load_schema(), (), 0)
    return tuple(dict.fromkeys(found))
