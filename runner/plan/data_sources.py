"""The plan's data section: each source of data.train and data.eval as a part with its own format, column mapping
and templates (one source, or a mixture of several), and how a mixture combines them.

A mixture is one dataset to the trainer, so its sources may differ in format only where their rows arrive in the
same shape (alpaca, sharegpt and messages all become conversations); their shares of the training examples are
said here, from the weights (interleave) or the row counts (concatenate).
"""
from __future__ import annotations

from pathlib import Path

from runner.errors import Problem
from runner.plan.data_templates import check_templates
from runner.plan.evaluation import check_source
from runner.plan.scale import source_rows
from runner.plan.tasks import Task, data_format, trained_format
from runner.recipe import schema
from runner.recipe.sources import SPLITS, split_sources

NAME_CHARS = str.maketrans({c: "_" for c in " /\\:"})


def parts(data: dict, task: Task) -> dict[str, list[dict]]:
    """split -> its sources, each with the settings that apply to it (its own, else the data section's)."""
    found = {}
    for split in SPLITS:
        mixed = isinstance(data[split], list)
        found[split] = [_part(data, where, source, task, mixed) for where, source in split_sources(data, split)]
    return found


def _part(data: dict, where: str, source: dict, task: Task, mixed: bool) -> dict:
    own = lambda key: mixed and source.get(key) is not None  # noqa: E731
    return {
        "name": source.get("name") or default_name(source),
        "where": where,
        "source": {key: value for key, value in source.items()
                   if key not in ("name", "weight", "format", "columns", "templates")},
        "weight": source.get("weight", 1),
        "format": source["format"] if own("format") else data_format(task, data["format"]),
        "columns": source["columns"] if own("columns") else data["columns"],
        "templates": source["templates"] if own("templates") else data["templates"],
        # where a problem with its columns or templates is reported
        "settings_at": where if own("columns") or own("templates") else "/data",
        "format_at": f"{where}/format" if own("format") else "/data/format",
    }


def default_name(source: dict) -> str:
    """The file's name without its suffix, or the Hub dataset's name (after its owner)."""
    name = Path(source["path"]).stem if "path" in source else source["hub"].rsplit("/", 1)[-1]
    return name.translate(NAME_CHARS) or "data"


def check_data(data: dict, task: Task) -> list[Problem]:
    """Sources exist, each format is the task's and fits its column mapping and templates, and a mixture's sources
    reach the trainer in one shape."""
    problems = []
    if data["eval"] is not None and data["eval_fraction"] is not None:
        problems.append(Problem("/data/eval_fraction", "set either data.eval or data.eval_fraction, not both"))
    found = parts(data, task)
    for part in found["train"] + found["eval"]:
        problems += check_source(part["source"], part["where"]) + check_part(part, data, task)
    problems += check_mixture(data, found) + check_one_shape(found, task)
    return list({(p.path, p.message): p for p in problems}.values())  # a shared setting's problem, said once


def check_streaming(doc: dict, task: Task) -> list[Problem]:
    """A streamed training source has no length (max_steps, no eval_fraction); evaluation data is read whole (a
    limit); a task that reads its whole training data first cannot stream it."""
    data, problems = doc["data"], []
    streamed = [where for where, source in split_sources(data, "train") if source["streaming"]]
    if streamed and doc["training"]["max_steps"] <= 0:
        problems.append(Problem("/training/max_steps", f"{streamed[0]} is streamed: its length, and so an epoch's "
                                "steps, is not known", "set training.max_steps (the optimizer steps to take)"))
    if streamed and data["eval_fraction"] is not None:
        problems.append(Problem("/data/eval_fraction", f"cannot split rows off {streamed[0]}, which is streamed",
                                "name the evaluation data in data.eval"))
    if streamed and doc["training"].get("precompute_ref_log_probs"):
        problems.append(Problem("/training/precompute_ref_log_probs", f"reads the whole training data before "
                                f"training; {streamed[0]} is streamed", "set it to false"))
    if streamed and task.cannot_stream:
        problems.append(Problem(f"{streamed[0]}/streaming", f"task '{task.name}' cannot stream its training data: "
                                f"{task.cannot_stream}", "load it whole: streaming false"))
    held_out = split_sources(data, "eval") + [(f"/evaluation/{key}", doc["evaluation"][key])
                                              for key in ("data", "retention") if doc["evaluation"][key]]
    problems += [Problem(f"{where}/limit", "a streamed evaluation source is read whole, every evaluation: it needs "
                         "a limit", "set limit to the number of rows to evaluate on (they are read once)")
                 for where, source in held_out if source["streaming"] and source["limit"] is None]
    return problems


def check_part(part: dict, data: dict, task: Task) -> list[Problem]:
    fmt, at = part["format"], part["settings_at"]
    if fmt not in task.formats:
        return [Problem(part["format_at"], f"task '{task.name}' does not read format '{fmt}'",
                        f"its formats: {', '.join(task.formats)}")]
    spec = task.formats[fmt]
    problems = []
    if data["labels"] is not None and "label" not in spec.fields:
        problems.append(Problem("/data/labels", f"format '{fmt}' has no labels"))
    wanted = spec.fields + spec.optional
    mapped = [part["columns"].get(field, field) for field in wanted]
    for column in sorted({c for c in mapped if mapped.count(c) > 1}):
        problems.append(Problem(f"{at}/columns", f"column '{column}' is mapped to more than one field",
                                "each field needs its own column"))
    for key in part["columns"]:
        if key not in wanted:
            problems.append(Problem(f"{at}/columns/{key}", f"format '{fmt}' has no field '{key}'",
                                    f"its fields are: {', '.join(wanted)}"))
    return problems + check_templates(part, wanted)


def check_mixture(data: dict, found: dict) -> list[Problem]:
    """Names tell the sources apart; the mixture's settings apply (weights and stopping only to interleave)."""
    problems, mixed = [], isinstance(data["train"], list)
    defaults, weight = schema.defaults_of("mixture"), schema.defaults_of("mixed_source")["weight"]
    if not mixed:
        problems += [Problem(f"/data/mixture/{key}", "applies to a list of training sources; data.train is one",
                             "make data.train a list of sources, or remove it") for key, value in
                     data["mixture"].items() if value != defaults[key]]
    elif data["mixture"]["strategy"] == "concatenate":
        problems += [Problem(f"{part['where']}/weight", "weights apply to strategy 'interleave'; 'concatenate' "
                             "uses every row of every source once", "remove the weight, or set data.mixture.strategy "
                             "to 'interleave'") for part in found["train"] if part["weight"] != weight]
        if data["mixture"]["stopping_strategy"] != defaults["stopping_strategy"]:
            problems.append(Problem("/data/mixture/stopping_strategy", "applies to strategy 'interleave'"))
    for split in SPLITS:
        if isinstance(data[split], list):
            problems += [Problem(f"{part['where']}/weight", "evaluation sources are evaluated whole: a weight "
                                 "does not apply") for part in found[split]
                         if split == "eval" and part["weight"] != weight]
            problems += duplicate_names(found[split])
    return problems


def duplicate_names(split_parts: list[dict]) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for part in split_parts:
        if part["name"] in seen:
            problems.append(Problem(f"{part['where']}/name", f"another source ({seen[part['name']]}) is also named "
                                    f"'{part['name']}'", "give each source its own name"))
        seen.setdefault(part["name"], part["where"])
    return problems


def check_one_shape(found: dict, task: Task) -> list[Problem]:
    """Every source reaches the trainer in the shape of the first training source's rows."""
    known = [part for part in found["train"] + found["eval"] if part["format"] in task.formats]
    if not known:
        return []
    first, shape = known[0], trained_format(task, known[0]["format"])
    return [Problem(part["format_at"], f"format '{part['format']}' reaches the trainer as '{trained_format(task, part['format'])}' "
                    f"rows, but {first['where']} (format '{first['format']}') as '{shape}' rows: one dataset "
                    "cannot hold both", _same_shape_hint(task, shape))
            for part in known[1:] if trained_format(task, part["format"]) != shape]


def _same_shape_hint(task: Task, shape: str) -> str:
    fitting = [name for name in task.formats if trained_format(task, name) == shape]
    hint = f"give every source a format that becomes '{shape}': {', '.join(fitting)}"
    if shape == "messages":
        hint += " (e.g. format 'alpaca' with templates for instruction and output turns prompt/answer rows into a conversation)"
    return hint


def data_spec(data: dict, task: Task, evaluation_data: dict | None) -> dict:
    """`evaluation_data`: evaluation.data, read with the data section's own settings; beside a mixture, with its
    first training source's (format, columns, templates), the shape the trainer's rows have."""
    found = parts(data, task)
    chosen = _part(data, "/evaluation/data", evaluation_data, task, False) if evaluation_data else None
    if chosen and isinstance(data["train"], list):
        first = found["train"][0]
        chosen.update({key: first[key] for key in ("format", "columns", "templates", "settings_at", "format_at")})
    return {
        "format": found["train"][0]["format"],
        "train": [part_spec(part, task) for part in found["train"]],
        "eval": [part_spec(part, task) for part in found["eval"]] or None,
        "evaluation_data": part_spec(chosen, task) if chosen else None,
        "eval_fraction": data["eval_fraction"],
        "mixture": mixture_spec(data, found["train"]),
        "labels": data["labels"],
    }


def part_spec(part: dict, task: Task) -> dict:
    spec = task.formats[part["format"]]
    columns, made = part["columns"], part["templates"] or {}
    return {
        "name": part["name"],
        "where": part["where"],
        "source": part["source"],
        "weight": part["weight"],
        "format": part["format"],
        # canonical field -> column in the source data; optional fields may be absent unless mapped
        "columns": {f: columns.get(f, f) for f in spec.fields + spec.optional},
        "optional": [f for f in spec.optional if f not in columns and f not in made],
        "templates": made,  # fields built from the row's own fields (runner/recipe/templates.py)
        "templates_at": f"{part['settings_at']}/templates",
        "optional_fields": list(spec.optional),
    }


def mixture_spec(data: dict, train: list[dict]) -> dict | None:
    """How the training sources combine, and each one's expected share of the training examples."""
    if not isinstance(data["train"], list):
        return None
    mixture = data["mixture"]
    rows = {part["name"]: source_rows(part["source"])[0] for part in train}
    if mixture["strategy"] == "concatenate":
        total = sum(rows.values()) if None not in rows.values() else None
        shares = {name: (count / total if total else None) for name, count in rows.items()}
        expected = total
    else:
        weights = {part["name"]: part["weight"] for part in train}
        shares = {name: weight / sum(weights.values()) for name, weight in weights.items()}
        expected = expected_interleaved_rows(rows, shares, mixture["stopping_strategy"])
    return {
        "strategy": mixture["strategy"],
        "stopping_strategy": mixture["stopping_strategy"] if mixture["strategy"] == "interleave" else None,
        "seed": mixture["seed"],  # null: training.seed
        "sources": {name: {"rows": rows[name], "share": shares[name]} for name in rows},
        "expected_rows": expected,
    }


def expected_interleaved_rows(rows: dict, shares: dict, stopping: str) -> int | None:
    """About how many examples an interleave draws: until the first source runs out (first_exhausted), until
    each has run out once (all_exhausted), or every row once (without replacement)."""
    if None in rows.values():
        return None
    if stopping == "all_exhausted_without_replacement":
        return sum(rows.values())
    spans = [count / shares[name] for name, count in rows.items()]  # draws until that source runs out
    return round(min(spans) if stopping == "first_exhausted" else max(spans))
