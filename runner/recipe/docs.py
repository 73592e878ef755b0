"""The recipe reference, generated from the schema (`python -m runner docs > docs/recipe.md`).

The test suite regenerates it and compares with docs/recipe.md, so the docs cannot drift.
"""
from __future__ import annotations

import json

from runner.recipe import schema

HEADER = """# Recipe reference

Generated from `schemas/recipe.schema.json` by `python -m runner docs`; do not edit by hand.
Every object is closed: a key not listed here is an error (with a "did you mean" hint).

"""


def reference() -> str:
    root = schema.load_schema()
    parts = [HEADER, root["description"] + "\n\n", "## Top level\n\n", _table(root)]
    for title, sub in _sections(root):
        parts += [f"\n## `{title}`\n\n", sub.get("description", "") + "\n\n", _table(sub)]
    return "".join(parts)


def _sections(root: dict):
    """(dotted name, schema) of every object worth its own table, in reading order."""
    for key, prop in root["properties"].items():
        yield from _per_task(root, key)
        sub = schema.resolve(prop)
        if sub.get("type") == "object" and (sub.get("properties") or sub.get("allOf")):
            yield key, sub
            yield from _nested(key, sub)
            for part in sub.get("allOf", []):
                if "if" in part:
                    (disc, cond), = part["if"]["properties"].items()
                    yield f"{key}` with `{disc}: \"{cond['const']}\"", schema.resolve(part["then"])


def _per_task(root: dict, key: str):
    """A section closed per task (`training`): its shared part, then each task's own keys."""
    by_ref: dict[str, list[str]] = {}
    for part in root.get("allOf", []):
        ref = part["then"]["properties"].get(key, {}).get("$ref")
        if ref:
            by_ref.setdefault(ref, []).append(part["if"]["properties"]["task"]["const"])
    shared_done = False
    for ref, tasks in by_ref.items():
        sub = schema.resolve({"$ref": ref})
        for shared in sub.get("allOf", []):
            if not shared_done:
                shared_done = True
                yield f"{key}` shared by every `task", schema.resolve(shared)
        names = "`, `".join(tasks)
        yield f"{key}` with `task` `{names}", sub


def _nested(prefix: str, sub: dict):
    """Object-valued fields of a section; fields sharing one definition get one table."""
    groups: dict[str, list[str]] = {}
    bodies: dict[str, dict] = {}
    for key, prop in sub.get("properties", {}).items():
        for branch in _object_branches(prop):
            inner = schema.resolve(branch)
            name = f"{prefix}.{key}" + ("[]" if branch is not prop and _is_list(prop, branch) else "")
            ref = branch.get("$ref", name)
            if name not in groups.get(ref, []):
                groups.setdefault(ref, []).append(name)
            bodies[ref] = inner
    for ref, names in groups.items():
        yield "`, `".join(names), bodies[ref]


def _object_branches(prop: dict) -> list[dict]:
    """The object schemas a field takes: its own, its first object branch, and a list's item (`[]` in the name)."""
    found = []
    for branch in [prop] + prop.get("anyOf", []):
        inner = schema.resolve(branch)
        if inner.get("type") == "object" and inner.get("properties") and not found:
            found.append(branch)
        if inner.get("type") == "array" and schema.resolve(inner.get("items", {})).get("properties"):
            found.append(inner["items"])
    return found


def _is_list(prop: dict, branch: dict) -> bool:
    return any(schema.resolve(b).get("items") is branch for b in prop.get("anyOf", []))


def _table(sub: dict) -> str:
    required = set(sub.get("required", []))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in sub.get("properties", {}).items():
        prop = schema.resolve(prop)
        default = "required" if key in required else _code(prop["default"]) if "default" in prop else "-"
        text = prop.get("description", "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type(prop)} | {default} | {text} |")
    return "\n".join(rows) + "\n"


def _type(prop: dict) -> str:
    if "enum" in prop:
        return " \\| ".join(_code(v) for v in prop["enum"])
    if "const" in prop:
        return _code(prop["const"])
    if "type" in prop:
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        return " \\| ".join(types)
    options = prop.get("anyOf", []) + prop.get("oneOf", [])
    if options:
        return " \\| ".join(_type(schema.resolve(o)) if "$ref" not in o else "object" for o in options)
    return "object"


def _code(value) -> str:
    return "`" + json.dumps(value).replace("|", "\\|") + "`"
