"""The plan's evaluation part: which metrics on which data, checked against the task and format."""
from __future__ import annotations

from pathlib import Path

from runner.errors import Problem, did_you_mean
from runner.plan.data_templates import first_row
from runner.plan.tasks import GENERATIVE, Task
from runner.recipe import templates


def check_source(source: dict | None, where: str) -> list[Problem]:
    """A data source's local file exists, and Hub-only keys are not set on a file."""
    if not source or "path" not in source:
        return []
    problems = []
    try:
        found = Path(source["path"]).is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        return [Problem(f"{where}/path", f"not a usable path: {exc.strerror}")]
    if not found and Path(source["path"]).is_dir():
        problems.append(directory_problem(Path(source["path"]), f"{where}/path"))
    elif not found:
        problems.append(Problem(f"{where}/path", f"file not found: {source['path']}",
                                "a relative path is resolved against the recipe's directory"))
    problems += [Problem(f"{where}/{key}", "only applies to Hub datasets ('hub')")
                 for key in ("subset", "revision") if source[key] is not None]
    return problems


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def directory_problem(path: Path, where: str) -> Problem:
    """A folder where a data file belongs: say so (not "file not found"), with the data files it holds."""
    files = sorted(p.name for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
    shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    return Problem(where, f"{path} is a directory, not a data file", "name one file inside it"
                   + (f" (it holds {shown})" if files else "") + "; each source reads one file")


def has_eval_data(doc: dict) -> bool:
    data = doc["data"]
    return any(x is not None for x in (data["eval"], data["eval_fraction"], doc["evaluation"]["data"]))


def check_evaluation(doc: dict, task: Task, fmt: str) -> list[Problem]:
    evaluation = doc["evaluation"]
    problems = check_source(evaluation["data"], "/evaluation/data")
    problems += check_source(evaluation["retention"], "/evaluation/retention")
    for i, name in enumerate(evaluation["metrics"] or []):
        if name not in task.metrics:
            problems.append(Problem(f"/evaluation/metrics/{i}", f"'{name}' does not apply to task '{task.name}'",
                                    f"its metrics: {', '.join(task.metrics)}"))
        elif name in GENERATIVE and not task.formats[fmt].generative:
            problems.append(Problem(f"/evaluation/metrics/{i}", f"'{name}' compares generated answers with "
                                    f"references, which format '{fmt}' does not have",
                                    "use a format with prompts and answers: " + ", ".join(
                                        name for name, spec in task.formats.items() if spec.generative)))
    if evaluation["data"] is not None and doc["training"].get("precompute_ref_log_probs"):
        problems.append(Problem("/evaluation/data", "TRL cannot precompute reference log-probs for data it first "
                                "sees after training has started", "use data.eval for the evaluation data, or set "
                                "training.precompute_ref_log_probs to false"))
    wants_eval = evaluation["metrics"] is not None or evaluation["baseline"]
    if wants_eval and not has_eval_data(doc) and evaluation["retention"] is None:
        problems.append(Problem("/evaluation", "asks for an evaluation but there is no evaluation data",
                                "add data.eval, data.eval_fraction or evaluation.data"))
    problems += check_references(doc)
    if evaluation["retention"] is not None and not task.causal_lm:
        problems.append(Problem("/evaluation/retention", f"task '{task.name}' has no language-model loss to "
                                "measure forgetting with", "retention applies to tasks sft and pretrain"))
    return problems


def check_references(doc: dict) -> list[Problem]:
    """evaluation.references: a field path read from a file's rows as they are, for the generative metrics."""
    evaluation, where = doc["evaluation"], "/evaluation/references"
    if evaluation["references"] is None:
        return []
    source = evaluation["data"] or doc["data"]["eval"]
    if isinstance(source, list):
        return [Problem(where, "reads one file's rows in order; data.eval is a list of sources",
                        "name the file with the references in evaluation.data")]
    if source is None:
        return [Problem(where, "needs the evaluation rows as they are in a file: data.eval or evaluation.data",
                        "data.eval_fraction splits rows off the training data after conversion; name data.eval")]
    if not set(evaluation["metrics"] or ()) & set(GENERATIVE):
        return [Problem(where, "only the generative metrics read references (exact_match, rouge, bleu)",
                        "add one to evaluation.metrics, or remove evaluation.references")]
    try:
        path = templates.path_of(evaluation["references"])
    except templates.TemplateError as exc:
        return [Problem(where, str(exc))]
    row = first_row(source)
    if row is not None and path[0] not in row:
        return [Problem(where, f"the first row of {source['path']} has no field '{path[0]}'",
                        did_you_mean(path[0], list(row)) or f"its fields: {', '.join(row)}")]
    try:
        if row is not None:
            templates.answers(row, path)
    except templates.TemplateError as exc:
        return [Problem(where, f"the first row of {source['path']}: {exc}")]
    return []


def evaluation_spec(doc: dict, task: Task, fmt: str) -> dict:
    """What `evaluation.py` computes, before (with baseline) and after training."""
    evaluation = doc["evaluation"]
    metrics = list(evaluation["metrics"] or task.default_metrics) if has_eval_data(doc) else []
    return {
        "metrics": metrics,
        "data": evaluation["data"],
        "max_examples": evaluation["max_examples"],
        "references": evaluation["references"],
        "baseline": evaluation["baseline"],
        "retention": evaluation["retention"],
        "generation": evaluation["generation"],
    }
