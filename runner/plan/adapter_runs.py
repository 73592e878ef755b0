"""An earlier run that saved an adapter, named as the start model (`model.name_or_path`), with `model.adapter`
saying how it becomes one: merged into its base as it loads, or trained on.

The base is the run's, read from its plan.json and adapter_config.json (which records where the base's weights
are: the run's model, or the random start weights the run kept in its directory). Pure: reads small files only.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import Problem
from runner.plan.methods import METHODS
from runner.recipe import schema
from runner.records.checkpoints import sha256
from runner.plan.tasks import TASKS, Task

ADAPTER_FILE = "adapter_config.json"
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# the run's own base settings: set here they would describe another base than the one the adapter was trained on
BASE_KEYS = ("gguf_file", "revision", "config_overrides", "init")
# how the base is loaded: the recipe's (and the launch's decisions), at every level of a chain of runs
LOAD_KEYS = ("task", "task_config", "dtype", "attn_implementation", "quantization", "ignore_mismatched_sizes",
             "trust_remote_code", "allow_pickle_weights")


def run_plan(location: str) -> dict | None:
    """The plan of the run in `location` when it is a finished adapter run, else None."""
    run_dir = Path(location)
    if not run_dir.is_absolute() or not (run_dir / ADAPTER_FILE).is_file() or not (run_dir / "plan.json").is_file():
        return None
    try:
        plan = json.loads((run_dir / "plan.json").read_text())
        adapter = json.loads((run_dir / ADAPTER_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(plan, dict) or not isinstance(adapter, dict) or "recipe" not in plan:
        return None
    return {**plan, "adapter_base": adapter.get("base_model_name_or_path")}


def check(doc: dict, task: Task) -> list[Problem]:
    model, mode = doc["model"], doc["model"]["adapter"]
    run = run_plan(model["name_or_path"])
    if run is None:
        if mode is None:
            return []
        return [Problem("/model/adapter", f"{model['name_or_path']} is not a finished run that saved an adapter",
                        "remove model.adapter, or name the output directory of an adapter run (its "
                        "adapter_config.json and plan.json)")]
    method, run_task = run["peft"]["method"], run["task"]
    where = f"{model['name_or_path']} is a {run_task} run that saved a {method} adapter"
    if mode is None:
        return [Problem("/model/adapter", f"{where}: say how it becomes the start model",
                        'set model.adapter to "merge" (merged into its base as it loads; peft says what trains) '
                        'or "train" (the run\'s adapter trains on)')]
    defaults = schema.defaults_of("model")
    problems = [Problem(f"/model/{key}", f"the base is the run's ({where}): its own {key} applies",
                        f"remove model.{key}")
                for key in BASE_KEYS if model[key] != defaults[key]]
    if not TASKS[run_task].causal_lm:  # its head (modules_to_save) is trained for that run's labels or scores
        problems.append(Problem("/model/adapter", f"{where}: only a causal language model's adapter can start "
                                                  "another run", f"merge it (python -m runner merge "
                                                  f"{model['name_or_path']} --out DIR) and name DIR"))
    elif mode == "merge" and not METHODS[method].mergeable:
        problems.append(Problem("/model/adapter", f"{where}: it has no weights to merge (it adds virtual tokens to "
                                                  "every input)", 'set model.adapter to "train"'))
    elif mode == "train":
        problems += _same_adapter(doc, task, run, where)
    if mode == "train" and model["quantization"]["method"] != "none" and base_spec(run).get("gguf_file"):
        problems.append(Problem("/model/quantization", f"{where} on a GGUF file's weights, which bitsandbytes "
                                                       "cannot quantize as they load",
                                'set model.adapter to "merge" (the merged weights are quantized), or remove '
                                "quantization"))
    return problems


def _same_adapter(doc: dict, task: Task, run: dict, where: str) -> list[Problem]:
    """An adapter that trains on is the run's, as it was made: the recipe's peft section must say so."""
    if TASKS[run["task"]].peft_task_type != task.peft_task_type:
        return [Problem("/model/adapter", f"{where}: it cannot train on as a {task.name} model",
                        'set model.adapter to "merge" and train a new adapter or the whole model')]
    theirs, mine = schema.fill_defaults(run["recipe"])["peft"], doc["peft"]  # an older run: today's defaults
    fix = ("the run's adapter trains on as it was made; to change it, merge it (model.adapter: merge) and train "
           "a new one")
    return [Problem(f"/peft/{key}", f"is {json.dumps(mine.get(key))} here but the run's adapter has "
                                    f"{json.dumps(theirs.get(key))}", f"set peft.{key} to {json.dumps(theirs.get(key))}: "
                                                                      f"{fix}")
            for key in sorted(set(theirs) & set(mine)) if theirs[key] != mine[key]]


def base_config(location: str, read_config) -> tuple[dict | None, str] | None:
    """The config of the base the run's adapter loads onto (with the run's overrides) and where it was read; None:
    not an adapter run. `read_config` reads a model's config as the plan does (a GGUF file's metadata, the Hub
    cache, an earlier adapter run's base in turn)."""
    run = run_plan(location)
    if run is None:
        return None
    base = base_spec(run)
    config, source = read_config({"adapter": None, **base})
    return ({**config, **base["config_overrides"]} if config else None), source


def spec(model: dict, this: dict) -> dict | None:
    """The plan's `adapter_run` section: the run, how its adapter is used, and the base it loads onto. `this` is
    the recipe's model spec, whose load settings (LOAD_KEYS) apply to the base as well."""
    run = run_plan(model["name_or_path"])
    if run is None or model["adapter"] is None:
        return None
    return {"run_dir": model["name_or_path"], "mode": model["adapter"], "method": run["peft"]["method"],
            "run_task": run["task"], "adapter_sha256": weights_digest(model["name_or_path"]),
            "base": {**base_spec(run), **load_settings(this)}}


def base_spec(run: dict) -> dict:
    """The model spec of the base a run's adapter was trained on, from the run's plan (its model spec and the base
    peft recorded in adapter_config.json): the question `plan` asks of an earlier run, and `eval`, `predict`,
    `merge` and `quantize` of a finished one."""
    model, recorded = run["model"], run["adapter_base"]
    continued = model.get("adapter_run") or {}
    if continued.get("mode") == "train":  # it trained on an earlier run's adapter: on that run's base
        return continued["base"]
    if recorded == model["name_or_path"]:  # its own start model, however it was loaded (a merged run's included)
        return model
    # the random start weights the run kept in its directory (runner/train/random_base.py)
    return {**model, "name_or_path": recorded, "init": "pretrained", "config_overrides": {}, "gguf_file": None,
            "adapter_run": None}


def base_to_load(spec: dict) -> dict:
    """The spec of the base to load for a model spec with an `adapter_run`: the run's base in the spec's load
    settings, as decided at launch (dtype, attention). A base an adapter merges into loads unquantized, at the
    4-bit compute dtype (a low-rank update added to 4-bit blocks would be rounded away); the merged weights are
    quantized afterwards. Nested runs get the same settings in turn, when their own base loads."""
    run, settings = spec["adapter_run"], load_settings(spec)
    if run["mode"] == "merge" and spec.get("quantization"):
        compute = spec["quantization"]["kwargs"].get("bnb_4bit_compute_dtype")
        settings.update(quantization=None, dtype=compute or spec["dtype"])
    return {**run["base"], **settings}


def load_settings(spec: dict) -> dict:
    """How a model spec loads its weights (LOAD_KEYS), to load a run's base the same way."""
    return {key: spec[key] for key in LOAD_KEYS if key in spec}


def weights_digest(run_dir: str) -> str | None:
    """The sha256 of the adapter's weights: the record of which adapter this run started from, checked again
    whenever the run's model is rebuilt from it (resume, eval, predict, merge, quantize). Tens of MB for a LoRA of
    a 7B model: well under a second (runner/records/checkpoints.py measures the hashing)."""
    found = next((Path(run_dir) / name for name in WEIGHTS_FILES if (Path(run_dir) / name).is_file()), None)
    return sha256(found) if found else None


def changed_adapter(run: dict) -> list[Problem]:
    """The plan's adapter run no longer holds the adapter the plan recorded (overwritten by a new run of its recipe,
    say): building on it would mix another start model with this run's training."""
    if not run or run.get("adapter_sha256") is None or weights_digest(run["run_dir"]) == run["adapter_sha256"]:
        return []
    return [Problem("/model/name_or_path", f"the adapter in {run['run_dir']} has changed since this run started "
                                           f"from it (its sha256 was {run['adapter_sha256'][:12]}...)",
                    "restore that run's adapter, or start this run over with --overwrite")]
