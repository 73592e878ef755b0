"""Load the plan's data sources and map them to the task's canonical columns.

Every user-data problem (unreadable file, missing column, empty split) becomes a RecipeError
naming the recipe path of the source, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.data import files as data_files
from runner.errors import Problem, RecipeError, did_you_mean
from runner.data.rows import row_problems
from runner.data import sharegpt
from runner.data import streaming
from runner.data.mixture import concatenated, mixed, untagged
from runner.data.mixture import drawn as count_drawn
from runner.data import tool_calls
from runner.data.rows import shown_rows
from runner.recipe import templates
from runner.data.labels import encode_labels

# file suffix -> (datasets builder, its options)
# CSV/TSV: a BOM-tolerant read (spreadsheets write one, and it would become part of the first column's name), and
# cells read as written: pandas' default turns "NA", "None", "null" and empty cells into missing values, which
# a text column must never lose.
TABLE = {"encoding": "utf-8-sig", "keep_default_na": False}
BUILDERS = {".json": ("json", {}), ".jsonl": ("json", {}), ".csv": ("csv", TABLE),
            ".tsv": ("csv", {**TABLE, "delimiter": "\t"}), ".parquet": ("parquet", {})}


@dataclass
class Splits:
    """The canonical datasets of a run (rows in the format the trainer reads)."""

    train: object
    eval: object | None  # evaluated during training and for the final loss
    evaluation: object | None  # what evaluation metrics are computed on (evaluation.data, else eval)
    retention: object | None  # general text measured before and after training
    # each evaluation row's reference answers (evaluation.references), in the rows' order; None: the format's own
    references: list[list[str]] | None = None
    # a mixture: each training source's own rows, and how many of the training rows each one gave
    train_sources: dict | None = None
    drawn: dict[str, int] | None = None
    # a list of evaluation sources: each one's rows of `eval`, as (first, end) row ranges in order
    eval_ranges: dict[str, tuple[int, int]] | None = None
    # the sources whose conversations call tools, by recipe path: {"source", "count", "rows"} (the file's row
    # numbers), read before eval_fraction reorders rows, so a template without tool support is named with them
    tool_rows: dict = field(default_factory=dict)


def load_all(plan: dict) -> tuple[Splits, dict]:
    """The run's datasets, plus what the task's data step derived from them (a label map, class weights).

    The task's data step sees whole files: `eval_fraction` is split off only after it, so its
    problems name rows of the files the user has.
    """
    spec, evaluation = plan["data"], plan["evaluation"]
    sources = {part["name"]: load_part(part, whole=False) for part in spec["train"]}
    train, drawn = mixed(sources, spec, plan["recipe"]["training"]["seed"])
    held_out, ranges, eval_parts = None, None, []
    if spec["eval"] is not None:
        eval_parts = [load_part(part) for part in spec["eval"]]
        held_out, ranges = concatenated({part["name"]: rows for part, rows in zip(spec["eval"], eval_parts)},
                                        spec["eval"])
    chosen = load_part(spec["evaluation_data"]) if spec["evaluation_data"] is not None else None
    references = reference_answers(evaluation, spec)
    retention = None
    if evaluation["retention"] is not None:
        text_spec = {"name": "retention", "where": "/evaluation/retention", "source": evaluation["retention"],
                     "format": "text", "columns": {"text": "text"}, "optional": [], "templates": {},
                     "column_hint": "retention data needs a 'text' column of plain text"}
        retention = load_part(text_spec)
    splits = Splits(train, held_out, chosen, retention, references, sources if len(sources) > 1 else None,
                    drawn if len(sources) > 1 else None, ranges if ranges and len(ranges) > 1 else None)
    derived = {"config": {}, "settings": {}}
    # each source's own rows, numbered as in its file (a stream's are found as it streams)
    splits.tool_rows = tool_rows({part["where"]: (part["source"], dataset) for part, dataset in
                                  zip(spec["train"] + (spec["eval"] or []), list(sources.values()) + eval_parts)})
    prepare = PREPARE.get(plan["task"])
    if prepare is not None:
        splits, derived = prepare(plan, splits)
    if spec["eval_fraction"] is not None:
        splits = split_off_eval(splits, spec["eval_fraction"], plan["recipe"]["training"]["seed"])
        if splits.drawn is not None:  # what each source gave the rows that train, not the ones split off
            splits = replace(splits, drawn=count_drawn(splits.train, list(splits.drawn)))
    splits = replace(splits, train=untagged(splits.train), eval=untagged(splits.eval))
    if splits.evaluation is None:
        splits = replace(splits, evaluation=splits.eval)
    if splits.references is not None and len(splits.references) != len(splits.evaluation):
        raise RuntimeError(f"{len(splits.references)} reference lists for {len(splits.evaluation)} evaluation rows: "
                           "a data step changed the rows evaluation.references was read for")
    return splits, derived


def tool_rows(sources: dict) -> dict:
    """{recipe path: {"source", "count", "rows"}} for the sources whose conversations call tools."""
    found = {}
    for where, (source, dataset) in sources.items():
        count, rows = tool_calls.rows_with_calls(dataset) if dataset is not None else (0, [])
        if count:
            found[where] = {"source": _name(source), "count": count, "rows": rows}
    return found


def split_off_eval(splits: Splits, fraction: float, seed: int) -> Splits:
    if len(splits.train) < 2:
        raise RecipeError([Problem("/data/eval_fraction", "the training data has too few rows to split")])
    parts = splits.train.train_test_split(test_size=fraction, seed=seed)
    return replace(splits, train=parts["train"], eval=parts["test"])


def load_source(source: dict, where: str, text_columns: tuple = ()):
    """One source as a dataset (a stream when it says `streaming`); `text_columns` of a CSV/TSV file are read as
    strings (see load_file)."""
    streamed = bool(source.get("streaming"))
    if "path" in source:
        dataset = load_file(Path(source["path"]), source["split"], f"{where}/path", text_columns, streamed)
    else:
        dataset = load_hub(source, where, streamed)
    if streamed:
        return dataset if source["limit"] is None else dataset.take(source["limit"])
    if source["limit"] is not None:
        dataset = dataset.select(range(min(source["limit"], len(dataset))))
    if len(dataset) == 0:
        raise RecipeError([Problem(where, f"no rows in {_name(source)}")])
    return dataset


def load_file(path: Path, split: str, where: str, text_columns: tuple, streaming: bool = False):
    """A local file; what is wrong with it named with its line and the fix (runner/data/files.py).

    A CSV/TSV column is typed from its cells, so a text column of digits only ("123") would arrive as integers
    and be refused as "not text": the format's text columns are read as strings, as written. Other columns
    (a label) keep the types their cells give them.
    """
    import datasets

    problem = data_files.check_file(path, where)
    if problem:
        raise RecipeError([problem])
    builder, options = BUILDERS[path.suffix]
    if builder == "csv" and text_columns:
        options = {**options, "converters": dict.fromkeys(text_columns, str)}
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split=split, streaming=streaming, **options)
        if streaming:  # a stream parses as it is read: its first rows now, so a broken file is said here
            next(iter(dataset.take(1)), None)
            return dataset
    except Exception as exc:  # datasets raises many types for unreadable data
        found = data_files.diagnose(path, where, _cause(exc))
        raise RecipeError([found or Problem(where, f"cannot load {path}: {_cause(exc)}")]) from None
    if len(dataset) == 0:
        raise RecipeError([data_files.no_rows(path, where)])
    problem = data_files.one_object(path, len(dataset), where)
    if problem:
        raise RecipeError([problem])
    return dataset


def load_hub(source: dict, where: str, streaming: bool = False):
    import datasets

    try:
        return datasets.load_dataset(source["hub"], source["subset"], split=source["split"],
                                     revision=source["revision"], streaming=streaming)
    except Exception as exc:  # datasets raises many types for unreachable data
        raise RecipeError([Problem(f"{where}/hub", f"cannot load {source['hub']}: {_cause(exc)}")]) from None


def load_part(part: dict, whole: bool = True):
    """One source's rows, in its format's canonical columns (part: a source as the plan lists it). `whole`: read a
    streamed source's rows (its limit's worth) once, as evaluation data is; else it stays a stream."""
    read = [name for template in (part.get("templates") or {}).values() for name in templates.fields(template)]
    # CSV/TSV cells a format or a template reads stay text ("007" is not 7)
    text_columns = tuple(col for field, col in part["columns"].items() if field != "label") + tuple(read)
    dataset = load_source(part["source"], part["where"], text_columns)
    if not streaming.is_stream(dataset):
        return canonical(dataset, part)
    if whole:
        return canonical(streaming.read_whole(dataset), part)
    return streaming.canonical_stream(dataset, part, canonical, CONVERTERS, _name(part["source"]))


def canonical(dataset, spec: dict):
    """Keep the format's columns, renamed to their canonical names, converted to what the trainer reads."""
    where, name = spec["where"], _name(spec["source"])
    if spec.get("templates"):
        dataset = filled_templates(dataset, spec["templates"], spec["templates_at"], where, name)
    columns = spec["columns"]  # canonical -> source column
    missing = [(field, col) for field, col in columns.items()
               if col not in dataset.column_names and field not in spec["optional"]]
    if missing:
        raise RecipeError([
            Problem(where, f"no column '{col}' for field '{field}' (format '{spec['format']}') in "
                           f"{name}; columns: {', '.join(dataset.column_names)}",
                    did_you_mean(col, dataset.column_names) or spec.get("column_hint", f"map it with data.columns.{field}"))
            for field, col in missing
        ])
    present = {field: col for field, col in columns.items() if col in dataset.column_names}
    dataset = dataset.select_columns(list(present.values()))
    renames = {col: field for field, col in present.items() if col != field}
    dataset = dataset.rename_columns(renames) if renames else dataset
    problems = row_problems(dataset, columns, tuple(spec.get("optional_fields", ())), where, name, spec["format"])
    if problems:
        raise RecipeError(problems)
    convert = CONVERTERS.get(spec["format"])
    if convert is not None:
        dataset = dataset.map(convert, remove_columns=dataset.column_names, desc=f"Converting {spec['format']} rows")
    return dataset


def reference_answers(evaluation: dict, spec: dict) -> list[list[str]] | None:
    """evaluation.references read from the evaluation source's rows as they are in the file, in their order (the
    plan requires data.eval (one source) or evaluation.data for it, so no split reorders them)."""
    if not evaluation.get("references"):
        return None
    part = spec["evaluation_data"] or spec["eval"][0]
    source, where = part["source"], part["where"]
    path, answers, failures = templates.path_of(evaluation["references"]), [], {}
    for number, row in enumerate(load_source(source, where, (path[0],)), start=1):
        try:
            answers.append(templates.answers(row, path))
        except templates.TemplateError as exc:
            failures.setdefault(str(exc), []).append(number)
    if failures:
        raise RecipeError([Problem("/evaluation/references", f"{len(rows)} rows of {_name(source)} have no references "
                                   f"there: {reason}: rows {shown_rows(rows)}", "fix those rows, or the path")
                           for reason, rows in failures.items()])
    return answers


def filled_templates(dataset, field_templates: dict, at: str, where: str, name: str):
    """The dataset with each templated field built from the row's own fields; rows a template cannot fill are
    reported together, by template and row number, before anything is converted."""
    parsed = {field: templates.parse(template) for field, template in field_templates.items()}
    failures: dict[tuple[str, str], list[int]] = {}
    for number, row in enumerate(dataset, start=1):
        for field, parts in parsed.items():
            try:
                templates.render(parts, row)
            except templates.TemplateError as exc:
                failures.setdefault((field, str(exc)), []).append(number)
    if failures:
        raise RecipeError([Problem(f"{at}/{field}", f"{len(rows)} rows of {name} ({where}) cannot fill "
                                   f"it: {reason}: rows {shown_rows(rows)}", "fix those rows, or the template")
                           for (field, reason), rows in failures.items()])
    return dataset.map(lambda row: {field: templates.render(parts, row) for field, parts in parsed.items()},
                       desc="Filling the field templates")


def alpaca_to_messages(row: dict) -> dict:
    """An alpaca record as the conversation it stands for: the instruction (and input) asked, the output answered."""
    question = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]}


def _name(source: dict) -> str:
    return source.get("path") or source["hub"]


def _cause(exc: BaseException) -> str:
    """The first line of the innermost error: datasets wraps the parser's own words ("An error occurred while
    generating the dataset") around the one that says what is wrong."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# Data format -> the function turning one canonical row into what the trainer reads (the format's `becomes`).
CONVERTERS = {"messages": tool_calls.to_messages_row, "alpaca": alpaca_to_messages, "sharegpt": sharegpt.to_messages,
              "sharegpt_preference": sharegpt.to_preference}
# Task -> its data step: function(plan, splits) -> (splits, {"config": model config updates, "settings": ...}),
# run on whole files before eval_fraction is split off. Tasks without one are absent.
PREPARE = {"classification": encode_labels}
