"""Recipe file -> resolved, validated, default-filled, frozen Recipe.

Steps, in order: read JSON (syntax errors with line and column), resolve the file's local paths
against its own directory, merge the `extends` chain (child wins), apply `--set` overrides
(typed by the schema), validate, fill defaults. Only the result is ever validated or saved.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from runner.recipe import schema
from runner.errors import Problem, RecipeError, did_you_mean, pointer

PATH_PREFIXES = ("./", "../", "/", "~")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe with defaults filled. Read-only: derived values belong to the plan."""

    source: str  # absolute path of the recipe file it came from
    doc: Mapping[str, Any]

    def __getitem__(self, key: str):
        return self.doc[key]

    def to_dict(self) -> dict:
        return thaw(self.doc)


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    try:
        source = str(Path(path).resolve())
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError for a symlink loop
        raise RecipeError([Problem("", f"cannot read the recipe: {exc}", "fix or remove the symbolic link")],
                          source=str(path)) from None
    merged = _read_chain(Path(source), chain=())
    merged.pop("extends", None)
    problems = apply_overrides(merged, overrides)
    problems += non_finite_numbers(merged) + schema.validate(merged)
    if problems:
        raise RecipeError(problems, source=str(path))
    return Recipe(source=source, doc=freeze(schema.fill_defaults(merged)))


def _read_chain(path: Path, chain: tuple[Path, ...]) -> dict:
    doc = read_json(path)
    resolve_paths(doc, base=path.parent, source=path)
    parent = doc.get("extends")
    if parent is None:
        return doc
    if not isinstance(parent, str):
        raise RecipeError([Problem("/extends", f"{json.dumps(parent)} is not a string",
                                   "name one recipe file, e.g. \"extends\": \"base.json\"")], source=str(path))
    base_path = Path(parent)
    if base_path in chain + (path,):
        cycle = " -> ".join(str(p) for p in chain + (path, base_path))
        raise RecipeError([Problem("/extends", f"extends forms a cycle: {cycle}")], source=str(path))
    if not base_path.is_file():
        raise RecipeError([Problem("/extends", f"file not found: {base_path}",
                                   "the path is relative to the recipe that names it")], source=str(path))
    base = _read_chain(base_path, chain + (path,))
    base.pop("extends", None)
    return deep_merge(base, doc)


def read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark from an editor is not an error
    except FileNotFoundError:
        raise RecipeError([Problem("", f"recipe file not found: {path}")], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([Problem("", f"cannot read the recipe: {exc}")], source=str(path)) from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        msg = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise RecipeError([Problem("", msg)], source=str(path)) from None
    except RecursionError:
        raise RecipeError([Problem("", "the JSON is nested too deeply to be a recipe")], source=str(path)) from None
    except ValueError as exc:  # from the two hooks
        raise RecipeError([Problem("", str(exc))], source=str(path)) from None
    if not isinstance(doc, dict):
        raise RecipeError([Problem("", "a recipe must be a JSON object ({...})")], source=str(path))
    return doc


def non_finite_numbers(doc, parts: tuple = ()) -> list[Problem]:
    """NaN, Infinity and overflowing numbers (1e999) parse as floats that no setting can take."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return [Problem(pointer(parts), f"{doc} is not a finite number")]
    if isinstance(doc, dict):
        return [p for key, value in doc.items() for p in non_finite_numbers(value, parts + (key,))]
    if isinstance(doc, list):
        return [p for i, value in enumerate(doc) for p in non_finite_numbers(value, parts + (i,))]
    return []


def _reject_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key '{key}' appears twice in one object; keep one")
        seen[key] = value
    return seen


def changes_kind(base: dict, child: dict) -> bool:
    """True when the child object is another kind of thing than the base (merging would mix their fields)."""
    if "method" in child and "method" in base and child["method"] != base["method"]:
        return True
    sources = {"path", "hub"}
    return bool(sources & child.keys()) and bool(sources & base.keys()) and \
        (sources & child.keys()) != (sources & base.keys())


def deep_merge(base: dict, child: dict) -> dict:
    """Objects merge key by key; anything else in the child replaces the base's value.

    An object whose kind the child changes (another peft method, a Hub source over a file) is
    replaced whole: merging would leave the old kind's fields behind as errors.
    """
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not changes_kind(merged[key], value):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_paths(doc: dict, base: Path, only: tuple[str, ...] | None = None, source: Path | None = None) -> None:
    """Make the file's local paths absolute, relative to `base` (the directory of the file naming them)."""
    problems = []
    for parts, kind in schema.path_fields():
        if only is not None and not _within(parts, only):
            continue
        for where, parent in _parents(doc, parts[:-1], ()):
            if isinstance(parent, dict) and isinstance(parent.get(parts[-1]), str):
                try:
                    parent[parts[-1]] = resolve_one(parent[parts[-1]], base, kind)
                except (OSError, RuntimeError, ValueError) as exc:  # too long, ~unknown-user, NUL byte
                    problems.append(Problem(pointer(where + (parts[-1],)),
                                            f"{parent[parts[-1]][:80]!r} is not a usable path: {exc}"))
    if problems:
        raise RecipeError(problems, source=str(source) if source else None)


def _within(parts: tuple, only: tuple) -> bool:
    """Whether a path field's key path (with "*" for list items) lies under a concrete key path."""
    return len(parts) >= len(only) and all(a == b or (a == "*" and b.isdigit()) for a, b in zip(parts, only))


def _parents(doc, parts: tuple, where: tuple):
    """(concrete key path, value) of every place `parts` names; "*" is each item of a list."""
    if not parts:
        yield where, doc
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        for index, item in enumerate(doc if isinstance(doc, list) else []):
            yield from _parents(item, rest, where + (index,))
    elif isinstance(doc, dict) and head in doc:
        yield from _parents(doc[head], rest, where + (head,))


def resolve_one(value: str, base: Path, kind: str) -> str:
    """Absolute path for a local value; a Hub id ("org/name") is returned unchanged.

    A local-or-hub value is local when it starts like a path, or when it or its first component
    exists next to the recipe (so a typo in "assets/tiny-lama" is a missing directory, not a Hub id).
    """
    candidate = (base / Path(value).expanduser()).resolve()
    first = (base / Path(value).parts[0]) if Path(value).parts else candidate
    if kind == "local" or value.startswith(PATH_PREFIXES) or candidate.exists() or first.exists():
        return str(candidate)
    return value


# --- --set overrides ------------------------------------------------------------------------


def apply_overrides(doc: dict, overrides) -> list[Problem]:
    """Apply `--set a.b=value` in order; values are JSON unless the key only takes strings."""
    problems = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(Problem("", f"--set {text!r}: expected KEY=VALUE",
                                    "e.g. --set training.learning_rate=1e-4"))
            continue
        subs = schema.subschemas_at(parts)
        if not subs:
            problems.append(_unknown_override(parts, text))
            continue
        if parts == ["extends"]:
            problems.append(Problem("/extends", f"--set {text!r}: extends cannot be overridden",
                                    "write a recipe file that extends the one you want"))
            continue
        target, where = doc, []
        for part in parts[:-1]:
            target = _step_into(target, part)
            where.append(part)
            if target is None:
                problems.append(Problem(pointer(where), f"--set {text!r}: no source {part} here",
                                        "name a source of the recipe's list by its position, from 0"))
                break
        if target is None:
            continue
        value = _typed(raw, subs)
        if changes_kind(target, {parts[-1]: value}):
            kept = {key: target[key] for key in MIXTURE_KEYS if key in target and parts[-1] in ("path", "hub")}
            target.clear()  # e.g. peft.method=none on a LoRA recipe: LoRA's fields go with it
            target.update(kept)  # a mixture's source keeps its place in the mixture when its file becomes a Hub id
        target[parts[-1]] = value
        resolve_paths(doc, base=Path.cwd(), only=tuple(parts))
    return problems


# What a source of a mixture is besides where its rows come from
MIXTURE_KEYS = ("name", "weight", "format", "columns", "templates")


def _step_into(target, part: str):
    """The object at `part` for a --set to write into (made when missing); a list (of sources) is indexed by
    position. None: no such item."""
    if isinstance(target, list):
        return target[int(part)] if part.isdigit() and int(part) < len(target) else None
    if not isinstance(target.get(part), (dict, list)):
        target[part] = {}
    return target[part]


def _unknown_override(parts: list[str], text: str) -> Problem:
    for depth in range(len(parts), 0, -1):
        if schema.subschemas_at(parts[: depth - 1]) and not schema.subschemas_at(parts[:depth]):
            known = schema.keys_at(parts[: depth - 1])
            hint = did_you_mean(parts[depth - 1], known)
            return Problem(pointer(parts[:depth]), f"unknown key (in --set {text!r})", hint)
    return Problem(pointer(parts), f"unknown key (in --set {text!r})")


def _typed(raw: str, subs: list[dict]):
    """Strings stay strings where only a string fits; everything else is read as JSON."""
    types = {t for s in subs for t in _types_of(s)}
    if types == {"string"}:
        return raw
    try:
        return json.loads(raw)
    except ValueError:  # not JSON (or an integer too long to convert): validation reports the type
        return raw


def _types_of(sub: dict) -> list[str]:
    sub = schema.resolve(sub)
    if "type" in sub:
        return [sub["type"]] if isinstance(sub["type"], str) else list(sub["type"])
    if "enum" in sub:
        return ["string" if isinstance(v, str) else "other" for v in sub["enum"]]
    if "const" in sub:
        return ["string" if isinstance(sub["const"], str) else "other"]
    branches = sub.get("anyOf", []) + sub.get("oneOf", [])
    return [t for b in branches for t in _types_of(b)] or ["other"]


# --- freezing -------------------------------------------------------------------------------


def freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value):
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def differing_paths(old, new, ignore: tuple[str, ...] = (), path: str = "") -> list[str]:
    """The JSON paths where two (resolved) recipes differ, leaving out the subtrees under `ignore`."""
    if any(path == skipped or path.startswith(skipped + "/") for skipped in ignore):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [p for key in sorted(old.keys() | new.keys())
                for p in differing_paths(old.get(key), new.get(key), ignore, f"{path}/{key}")]
    return [] if old == new else [path]
