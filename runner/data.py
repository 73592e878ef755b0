"""Load the plan's data sources and map them to the task's canonical columns.

Every user-data problem (unreadable file, missing column, empty split) becomes a RecipeError
naming the recipe path of the source, before any model is loaded.
"""
from __future__ import annotations

from pathlib import Path

from .errors import Problem, RecipeError, did_you_mean

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_splits(spec: dict, seed: int):
    """(train, eval or None) as datasets.Dataset objects with only the canonical columns."""
    train = _canonical(load_source(spec["train"], "/data/train"), spec, "train")
    evaluation = None
    if spec["eval"] is not None:
        evaluation = _canonical(load_source(spec["eval"], "/data/eval"), spec, "eval")
    elif spec["eval_fraction"] is not None:
        if len(train) < 2:
            raise RecipeError([Problem("/data/eval_fraction", "the training data has too few rows to split")])
        parts = train.train_test_split(test_size=spec["eval_fraction"], seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation


def load_source(source: dict, where: str):
    import datasets

    try:
        if "path" in source:
            builder = BUILDERS[Path(source["path"]).suffix]
            dataset = datasets.load_dataset(builder, data_files=source["path"], split=source["split"])
        else:
            dataset = datasets.load_dataset(source["hub"], source["subset"], split=source["split"],
                                            revision=source["revision"])
    except Exception as exc:  # datasets raises many types for unreadable or unreachable data
        key = "path" if "path" in source else "hub"
        raise RecipeError([Problem(f"{where}/{key}", f"cannot load {_name(source)}: {_first_line(exc)}")]) from None
    if source["limit"] is not None:
        dataset = dataset.select(range(min(source["limit"], len(dataset))))
    if len(dataset) == 0:
        raise RecipeError([Problem(where, f"no rows in {_name(source)}")])
    return dataset


def _canonical(dataset, spec: dict, split: str):
    """Keep the format's columns, renamed to their canonical names."""
    columns = spec["columns"]  # canonical -> source column
    name = _name(spec[split])
    missing = [(field, col) for field, col in columns.items() if col not in dataset.column_names]
    if missing:
        raise RecipeError([
            Problem(f"/data/{split}", f"no column '{col}' for field '{field}' (format '{spec['format']}') in "
                                      f"{name}; columns: {', '.join(dataset.column_names)}",
                    did_you_mean(col, dataset.column_names) or f"map it with data.columns.{field}")
            for field, col in missing
        ])
    dataset = dataset.select_columns(list(columns.values()))
    renames = {col: field for field, col in columns.items() if col != field}
    return dataset.rename_columns(renames) if renames else dataset


def _name(source: dict) -> str:
    return source.get("path") or source["hub"]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
