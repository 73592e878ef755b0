"""Walking the recipe schema's tree (shared by the quick and tiny schema tests)."""
from __future__ import annotations


def walk(sub, path=()):
    """Yield (path, subschema) for every schema object in the tree."""
    if isinstance(sub, dict):
        yield path, sub
        for key, value in sub.items():
            if key in ("properties", "$defs"):
                for name, child in value.items():
                    yield from walk(child, path + (name,))
            elif key in ("allOf", "anyOf", "oneOf"):
                for i, child in enumerate(value):
                    yield from walk(child, path + (f"{key}[{i}]",))
            elif key in ("then", "else", "if", "items", "additionalProperties", "not"):
                yield from walk(value, path + (key,))
