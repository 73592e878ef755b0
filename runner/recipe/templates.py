"""Field templates: a source builds the fields its format needs from the row's own fields, with no code run.

    "templates": {"prompt": "Summarize: {source}", "completion": "{target[0]}"}
    "templates": {"prompt": "Translate to English: {translation.de}", "completion": "{translation.en}"}

`{path}` is replaced by the row's value there: names separated by dots go into nested objects, `[n]` picks item n
of a list. A list of strings is joined with single spaces (an abstract kept as a list of sentences); numbers and
booleans are written as JSON writes them. `{{` and `}}` are literal braces. Nothing else is interpreted.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")


class TemplateError(ValueError):
    """What is wrong with a template or a row it renders, in words for a message."""


def parse(template: str) -> list:
    """The template as literal strings and paths (tuples of keys and indexes)."""
    parts, text, i = [], "", 0
    while i < len(template):
        two = template[i:i + 2]
        if two in ("{{", "}}"):
            text, i = text + two[0], i + 2
        elif template[i] == "}":
            raise TemplateError(f"a '}}' at character {i + 1} closes nothing (write '}}}}' for a literal brace)")
        elif template[i] == "{":
            end = template.find("}", i)
            if end < 0:
                raise TemplateError(f"the '{{' at character {i + 1} is never closed")
            parts += [text] if text else []
            parts.append(path_of(template[i + 1:end]))
            text, i = "", end + 1
        else:
            text, i = text + template[i], i + 1
    return parts + ([text] if text else [])


def path_of(expression: str) -> tuple:
    """'translation.de' -> ('translation', 'de'); 'target[0]' -> ('target', 0)."""
    path: list = []
    for segment in expression.strip().split("."):
        match = SEGMENT.fullmatch(segment)
        if match is None:
            raise TemplateError(f"'{{{expression}}}' is not a field path (names joined by dots, each optionally "
                                "followed by [index])")
        path.append(match.group(1))
        path += [int(n) for n in re.findall(r"\[(\d+)\]", match.group(2))]
    return tuple(path)


def fields(template: str) -> list[str]:
    """The top-level row fields a template reads."""
    return sorted({part[0] for part in parse(template) if isinstance(part, tuple)})


def render(parts: list, row: dict) -> str:
    return "".join(part if isinstance(part, str) else _text(lookup(row, part), part) for part in parts)


def lookup(row, path: tuple):
    """The row's value at `path` (TemplateError, saying what is missing, where there is none)."""
    value = row
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise TemplateError(f"{shown(path)}: no item {step} (the value there is {_kind(value)})")
            value = value[step]
        elif not isinstance(value, Mapping) or value.get(step) is None:
            present = [name for name, item in value.items() if item is not None] if isinstance(value, Mapping) else []
            raise TemplateError(f"{shown(path)}: no field '{step}'" + (f" (fields there: {', '.join(present)})"
                                                                         if present else ""))
        else:
            value = value[step]
    if value in ("", []):  # a field that is there but says nothing: the filled text would hide it
        raise TemplateError(f"{shown(path)}: empty")
    return value


def _text(value, path: tuple) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    raise TemplateError(f"{shown(path)}: {_kind(value)} cannot be written as text")


def _kind(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return {dict: "an object", type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def shown(path: tuple) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return "{" + text + "}"


def answers(row, path: tuple) -> list[str]:
    """The reference answers at `path`: a string is one, a list of strings is all of them."""
    value = lookup(row, path)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TemplateError(f"{shown(path)}: references must be a string or a non-empty list of strings, not "
                        f"{_kind(value)}")
