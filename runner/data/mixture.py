"""Several sources as one dataset: drawn by weight (`interleave`, seeded: the same recipe draws the same mixture)
or one after another (`concatenate`), with the number of rows each source gave.

The sources' rows already have the trainer's shape (the plan refuses formats that would not); what may still differ
is their Arrow types, e.g. conversations whose turns carry a key the others lack. They are cast to the union of
their types first, the missing keys null, as `datasets` itself reads a file whose rows differ that way.
"""
from __future__ import annotations

from collections import Counter

from runner.data.streaming import size
from runner.errors import Problem, RecipeError

SOURCE = "__mixture_source__"  # the index of a row's source, until eval_fraction has split the rows


def mixed(sources: dict, spec: dict, training_seed: int) -> tuple[object, dict[str, int] | None]:
    """(the training rows, tagged with their source (untagged() drops it), source name -> rows it gave: None when
    streamed); one source is its own mixture."""
    if len(sources) == 1:
        (name, only), = sources.items()
        return only, {name: size(only)} if size(only) is not None else None
    import datasets

    if any(isinstance(part, datasets.IterableDataset) for part in sources.values()):
        return streamed_mixture(sources, spec, training_seed), None
    tagged = [part.add_column(SOURCE, [index] * len(part))
              for index, part in enumerate(aligned(sources, spec["train"]))]
    mixture = spec["mixture"]
    if mixture["strategy"] == "concatenate":
        combined = datasets.concatenate_datasets(tagged)
    else:
        weights = [part["weight"] for part in spec["train"]]
        seed = mixture["seed"] if mixture["seed"] is not None else training_seed
        combined = datasets.interleave_datasets(tagged, probabilities=[w / sum(weights) for w in weights],
                                                seed=seed, stopping_strategy=mixture["stopping_strategy"])
    return combined, drawn(combined, list(sources))


def drawn(rows, names: list[str]) -> dict[str, int]:
    """Source name -> how many of `rows` it gave (rows still tagged with their source)."""
    counts = Counter(rows[SOURCE])
    return {name: counts.get(index, 0) for index, name in enumerate(names)}


def untagged(rows):
    """The rows without their source's tag (the trainer reads only the format's fields)."""
    return rows.remove_columns(SOURCE) if rows is not None and SOURCE in (rows.column_names or ()) else rows


def streamed_mixture(sources: dict, spec: dict, training_seed: int):
    """A mixture with a streamed source streams as a whole (the others read as streams of their rows); what each
    source gave is not known before training has read it."""
    import datasets

    streams = [part if isinstance(part, datasets.IterableDataset) else part.to_iterable_dataset()
               for part in sources.values()]
    mixture = spec["mixture"]
    if mixture["strategy"] == "concatenate":
        return datasets.concatenate_datasets(streams)
    weights = [part["weight"] for part in spec["train"]]
    seed = mixture["seed"] if mixture["seed"] is not None else training_seed
    return datasets.interleave_datasets(streams, probabilities=[w / sum(weights) for w in weights], seed=seed,
                                        stopping_strategy=mixture["stopping_strategy"])


def concatenated(sources: dict, parts: list[dict]) -> tuple[object, dict[str, tuple[int, int]]]:
    """(the evaluation sources one after another, source name -> its (first, end) rows there)."""
    import datasets

    ranges, start = {}, 0
    for name, rows in sources.items():
        ranges[name] = (start, start + len(rows))
        start += len(rows)
    together = aligned(sources, parts)
    return (together[0] if len(together) == 1 else datasets.concatenate_datasets(together)), ranges


def aligned(sources: dict, parts: list[dict]) -> list:
    """The sources cast to one set of Arrow types (the union of theirs)."""
    datasets_ = with_missing_fields(list(sources.values()))
    first, wanted = parts[0], set(datasets_[0].column_names)
    for part, rows in zip(parts[1:], datasets_[1:]):
        if set(rows.column_names) != wanted:
            raise RecipeError([Problem(part["where"], f"source '{part['name']}' gives the trainer the fields "
                                       f"{sorted(rows.column_names)}, source '{first['name']}' {sorted(wanted)}: "
                                       "one dataset cannot hold both", "give the sources the same fields (e.g. every "
                                       "preference source an explicit prompt, or none)")])
    union = datasets_[0].features
    for part, rows in zip(parts[1:], datasets_[1:]):
        merged = union_of(union, rows.features)
        if merged is None:
            raise RecipeError([Problem(part["where"], f"the rows of source '{part['name']}' have other types than "
                                       f"those of '{first['name']}': {rows.features} against {union}",
                                       "give the same fields the same kind of value (text, number, list) in every "
                                       "source")])
        union = merged
    return [rows if rows.features == union else rows.cast(union) for rows in datasets_]


# Optional fields the trainer reads as absent when null: a source without them gets them as null columns, so it mixes
# with one that has them (not `prompt`: DPO tells an explicit prompt from an implicit one by its presence).
NULLABLE = ("tools", "answer")


def with_missing_fields(datasets_: list) -> list:
    present = {column for rows in datasets_ for column in rows.column_names if column in NULLABLE}
    return [_with_nulls(rows, present) for rows in datasets_]


def _with_nulls(rows, columns: set):
    for column in sorted(columns - set(rows.column_names)):
        rows = rows.add_column(column, [None] * len(rows))
    return rows


def union_of(one, other):
    """The Arrow type both fit (structs: every key of either; null: the other type); None when there is none."""
    from datasets import Features, List, Value

    if one == other:
        return one
    if isinstance(one, Value) and one.dtype == "null":
        return other
    if isinstance(other, Value) and other.dtype == "null":
        return one
    if isinstance(one, dict) and isinstance(other, dict):
        merged = {}
        for key in list(one) + [k for k in other if k not in one]:
            both = union_of(one[key], other[key]) if key in one and key in other else one.get(key, other.get(key))
            if both is None:
                return None
            merged[key] = both
        return Features(merged) if isinstance(one, Features) else merged
    if isinstance(one, List) and isinstance(other, List):
        item = union_of(one.feature, other.feature)
        return None if item is None else List(item)
    return None
