"""Streamed sources (`streaming: true`): rows read as the trainer needs them, never all at once.

Nothing can look at the whole of a stream before training, so its first HEAD_ROWS rows are read, checked and
converted exactly as a loaded source's (every problem among them said at once, before any model loads), and every
row is checked again as it streams: a bad later row stops the run naming its row number. The checks and reports
that measure data (check-data, the warnings before a run) measure a stream's first rows.
"""
from __future__ import annotations

from runner.data.rows import problem, row_reasons
from runner.errors import Problem, RecipeError
from runner.recipe import templates

HEAD_ROWS = 1000  # a stream's rows checked before training


def is_stream(dataset) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def head(dataset, rows: int | None):
    """The first `rows` rows (all when None) as a dataset; a stream's are read from its start."""
    if not is_stream(dataset):
        return dataset if rows is None else dataset.select(range(min(rows, len(dataset))))
    import datasets

    return datasets.Dataset.from_list(list(dataset.take(HEAD_ROWS if rows is None else rows)))


def first_row(dataset) -> dict | None:
    """The first row (None: no rows); a stream's is read from its start."""
    if is_stream(dataset):
        return next(iter(dataset.take(1)), None)
    return dataset[0] if len(dataset) else None


def size(dataset) -> int | None:
    """Rows in a dataset; None for a stream (not known until it has been read)."""
    return None if is_stream(dataset) else len(dataset)


def read_whole(stream):
    """An evaluation source, streamed with a limit (the plan requires one): its rows, read once."""
    import datasets

    return datasets.Dataset.from_list(list(stream))


def canonical_stream(stream, spec: dict, canonical, converters: dict, name: str):
    """The stream in the format's canonical columns, converted as the trainer reads them; its first rows checked
    now by `canonical` (the loaded sources' own path), every row as it streams."""
    import datasets

    first = list(stream.take(HEAD_ROWS))
    if not first:
        raise RecipeError([Problem(spec["where"], f"no rows in {name}")])
    canonical(datasets.Dataset.from_list(first), spec)  # raises every problem of the first rows
    convert = converters.get(spec["format"])
    parsed = {field: templates.parse(text) for field, text in (spec.get("templates") or {}).items()}

    def each(row: dict, index: int) -> dict:
        values = streamed_row(row, index, spec, parsed, name)
        return convert(values) if convert else values

    return stream.map(each, with_indices=True, remove_columns=list(first[0]))


def streamed_row(row: dict, index: int, spec: dict, parsed: dict, name: str) -> dict:
    """One row's canonical fields, or a RecipeError naming the row (counted from 1, as in the file)."""
    number, values = index + 1, {}
    for field, parts in parsed.items():
        try:
            values[field] = templates.render(parts, row)
        except templates.TemplateError as exc:
            raise RecipeError([Problem(f"{spec['templates_at']}/{field}", f"row {number} of {name} ({spec['where']}, "
                                       f"streamed) cannot fill it: {exc}", "fix that row, or the template")]) from None
    for field, column in spec["columns"].items():
        if field in values:
            continue
        if column in row:
            values[field] = row[column]
        elif field not in spec["optional"]:
            raise RecipeError([Problem(spec["where"], f"row {number} of {name} (streamed) has no column '{column}' "
                                       f"for field '{field}'", "fix that row")])
    reasons = row_reasons(values, tuple(spec.get("optional_fields", ())), spec["format"])
    if reasons:
        raise RecipeError([problem(spec["where"], f"{reason} (streamed)", [number], spec["columns"].get(field, field),
                                   name) for field, reason in reasons])
    return values
