"""The plan's checks of `data.templates`: each parses, fills a field of the format, and names fields the data has
(read from the first row of a local JSON/JSONL file, so nothing is read in full)."""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from runner.errors import Problem, did_you_mean
from runner.recipe import templates

FIRST_ROW_MAX_BYTES = 16 * 2**20  # a JSON array is parsed whole to see its first row: only up to this size
# Fields that hold turns or turn objects, which a template (text) cannot make.
NOT_TEXT = {"messages": "a list of chat turns", "conversations": "a list of ShareGPT turns"}
NOT_TEXT_IN = {"sharegpt_preference": {"chosen": "a ShareGPT gpt turn", "rejected": "a ShareGPT gpt turn"}}


def check_templates(part: dict, wanted: tuple[str, ...]) -> list[Problem]:
    """`part`: a data source with the format, columns and templates that apply to it (runner/plan/data_sources.py)."""
    if not part["templates"]:
        return []
    problems, fmt, at = [], part["format"], part["settings_at"]
    source = part["source"]
    row = first_row(source)
    not_text = {**NOT_TEXT, **NOT_TEXT_IN.get(fmt, {})}
    for field, template in part["templates"].items():
        where = f"{at}/templates/{field}"
        if field not in wanted:
            problems.append(Problem(where, f"format '{fmt}' has no field '{field}'", f"its fields: {', '.join(wanted)}"))
            continue
        if field in not_text:
            problems.append(Problem(where, f"'{field}' is {not_text[field]}; a template makes text",
                                    f"map the column that holds it with {at.lstrip('/').replace('/', '.')}.columns.{field}"))
            continue
        if field in part["columns"]:
            problems.append(Problem(where, f"'{field}' is also mapped to a column in {at.lstrip('/').replace('/', '.')}.columns",
                                    "keep either the template or the column"))
        try:
            parts = templates.parse(template)
        except templates.TemplateError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if row is not None:
            problems += unknown_fields(parts, row, where, source["path"]) or filled(parts, row, where, source["path"])
    return problems


def filled(parts: list, row: dict, where: str, path: str) -> list[Problem]:
    """The first row fills the template (nested fields, list items, values that can be text)."""
    try:
        templates.render(parts, row)
    except templates.TemplateError as exc:
        return [Problem(where, f"the first row of {path} cannot fill it: {exc}")]
    return []


def unknown_fields(parts: list, row: dict, where: str, path: str) -> list[Problem]:
    names = list(row)
    return [Problem(where, f"{templates.shown(part)}: the first row of {path} has no field '{part[0]}'",
                    did_you_mean(part[0], names) or f"its fields: {', '.join(names)}")
            for part in parts if isinstance(part, tuple) and part[0] not in row]


def first_row(source: dict | None) -> dict | None:
    """The first row of a local .jsonl or .json file (None: a Hub dataset, another kind of file, or unreadable:
    the data step checks every row when it loads them). Read once per file version: the template, tool-call and
    references checks all look at it."""
    if not source or "path" not in source:
        return None
    path = Path(source["path"])
    try:
        stat = path.stat()
    except OSError:
        return None
    row = _first_row(str(path), stat.st_mtime_ns, stat.st_size)
    return copy.deepcopy(row)


@functools.lru_cache(maxsize=32)
def _first_row(path_text: str, mtime_ns: int, size: int) -> dict | None:
    path = Path(path_text)
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                line = next((line for line in handle if line.strip()), None)
            row = json.loads(line) if line else None
        elif path.suffix == ".json" and size <= FIRST_ROW_MAX_BYTES:
            rows = json.loads(path.read_text(encoding="utf-8"))
            row = rows[0] if isinstance(rows, list) and rows else None
        else:
            return None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return row if isinstance(row, dict) else None
