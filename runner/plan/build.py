"""Recipe -> Plan: the cross-field checks the schema cannot express, and every derived value.

The plan is a plain JSON-serialisable dict that says exactly what will be built: the trainer
and its config class with their keyword arguments, the model and how it is loaded, the adapter
config, the data, the batch arithmetic and parameter counts. Pure apart from reading small
files (model config, existence of data files); never imports torch, transformers or trl.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from runner import __version__
from runner.plan import adapter_runs
from runner.plan import decisions
from runner.plan import gguf_file
from runner.plan import data_sources
from runner.plan.chat_tools import check_tool_template
from runner.plan import memory_fit
from runner.plan import rewards
from runner.plan import scale
from runner.plan import cache_location
from runner.errors import Problem, RecipeError, did_you_mean, pointer
from runner.recipe import schema
from runner.recipe.load import Recipe, thaw
from runner.plan.methods import METHODS, check_methods, parameter_counts, peft_spec, quantization_spec
from runner.plan.evaluation import check_evaluation, evaluation_spec
from runner.plan.tasks import TASKS, Task, trained_format
from runner.plan.topology import Topology


def build_plan(recipe: Recipe, topology: Topology | None = None) -> dict:
    """`topology`: where it will run (default one process); the batch and the refused combinations depend on it."""
    topology = topology or Topology()
    task = TASKS[recipe["task"]]
    doc = recipe.to_dict()
    fmt = data_sources.parts(doc["data"], task)["train"][0]["format"]  # a mixture's sources share its shape
    raw_config, config_source = read_model_config(doc["model"])
    model_config = {**raw_config, **doc["model"]["config_overrides"]} if raw_config else None
    problems = check_model(doc["model"], raw_config, task) + adapter_runs.check(doc, task)
    problems += data_sources.check_data(doc["data"], task)
    problems += data_sources.check_streaming(doc, task)
    if fmt in task.formats:  # the remaining checks read the format's fields
        problems += check_training(doc, task, fmt) + check_evaluation(doc, task, fmt) + check_tool_template(doc, fmt)
    problems += rewards.check_rewards(doc, task, fmt)
    if task.rewarded:
        problems += rewards.check_generation(doc, topology.world_size) + rewards.check_reference(doc)
    output_dir = resolve_output_dir(doc)
    problems += check_methods(doc, model_config, task) + cache_location.check_location(doc, output_dir)
    problems += scale.check_topology(doc, topology)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    return {
        "runner_version": __version__,
        "recipe_file": recipe.source,
        "task": task.name,
        "output_dir": output_dir,
        "model": model_spec(doc["model"], task),
        "data": data_sources.data_spec(doc["data"], task, doc["evaluation"]["data"]),
        "peft": peft_with_run(doc, task),
        "trainer": {
            "config": trainer_config(doc, task, fmt, output_dir),
            "runner_settings": runner_settings(doc, task, fmt),
            "reference_model": reference_model(doc, task),
        },
        "evaluation": evaluation_spec(doc, task, fmt),
        "rewards": rewards.rewards_spec(doc),
        "topology": topology.to_dict(),
        "batch": batch_section(doc, task, topology, model_config),
        "parameters": parameter_counts(model_config, config_source, doc["peft"], task),
        "memory": memory_fit.memory_section(doc, model_config, task.memory_kind, reference_model(doc, task),
                                            topology, config_source),
        "fast_defaults": decisions.plan_section(doc, task.name, model_config),
        "recipe": doc,
    }


# --- model ----------------------------------------------------------------------------------


def read_model_config(model: dict) -> tuple[dict | None, str]:
    """The model's own config.json (before overrides) and where it was read, when it can be read offline.

    A GGUF file carries its config as metadata: the keys the estimators read are taken from there.
    """
    if model["gguf_file"]:
        config, source, _ = gguf_file.read_config(model)
        return config, source
    location = model["name_or_path"]
    from_run = adapter_runs.base_config(location, read_model_config)
    if from_run is not None:
        return from_run
    path = Path(location) / "config.json"
    if not Path(location).is_absolute():
        path = _cached_hub_config(location, model["revision"])
        if path is None:
            return None, f"{location} is a Hub id whose config.json is not in the local cache"
    if not path.is_file():
        return None, f"no config.json in {location}"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"cannot read {path}: {exc}"
    return (config, str(path)) if isinstance(config, dict) else (None, f"{path} is not a JSON object")


def _cached_hub_config(repo_id: str, revision: str) -> Path | None:
    """config.json from the local Hub cache, read by its documented layout.

    Importing huggingface_hub for this would double the time of `validate`.
    """
    hub = os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    repo = Path(hub).expanduser() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    found = repo / "snapshots" / commit / "config.json"
    return found if found.is_file() else None


def check_model(model: dict, config: dict | None, task: Task) -> list[Problem]:
    location = Path(model["name_or_path"])
    if location.is_absolute() and not location.is_dir():
        return [Problem("/model/name_or_path", f"no such directory: {location}",
                        "a relative path is resolved against the recipe's directory")]
    if model["gguf_file"]:
        found = gguf_file.check(model)
        if found:
            return found
    elif location.is_absolute() and config is None:
        return run_dir_problem(location) or [Problem("/model/name_or_path", f"{location} has no readable config.json")]
    tokenizer = Path(model["tokenizer"] or "")
    if tokenizer.is_absolute() and not tokenizer.is_dir():
        return [Problem("/model/tokenizer", f"no such directory: {tokenizer}",
                        "a relative path is resolved against the recipe's directory")]
    if model["chat_template"] and not task.uses_chat_template:
        return [Problem("/model/chat_template", f"task '{task.name}' does not render chats", "remove it")]
    if model["chat_template"] and not Path(model["chat_template"]).is_file():
        return [Problem("/model/chat_template", f"file not found: {model['chat_template']}",
                        "a relative path is resolved against the recipe's directory")]
    if config is None or model["gguf_file"]:  # a GGUF's full config exists only once transformers builds it
        return []
    return [
        Problem(pointer(["model", "config_overrides", key]), "not a key of the model's config.json",
                did_you_mean(key, config))
        for key in model["config_overrides"] if key not in config
    ]


def run_dir_problem(location: Path) -> list[Problem]:
    """A run directory named as the start model that holds no full model: an adapter whose run cannot be read (a
    readable one is runner/plan/adapter_runs.py's) or nothing (the run did not finish). A full fine-tuning run's
    directory is a model directory and loads as one."""
    if not (location / "plan.json").is_file():
        return []
    run = adapter_runs.run_plan(str(location))
    if run is not None:
        return [Problem("/model/name_or_path", f"{location} is an adapter run whose base has no readable config "
                        f"(its adapter_config.json names {run['adapter_base']})",
                        "put the base where the run found it (a Hub model: in the local cache), or merge the "
                        "adapter where it is (python -m runner merge) and name the merged directory")]
    if (location / "adapter_config.json").is_file():
        return [Problem("/model/name_or_path", f"{location} saved an adapter, but its plan.json or "
                        "adapter_config.json cannot be read", f"merge it onto its base (python -m runner merge "
                        f"{location} --out DIR) and name DIR")]
    return [Problem("/model/name_or_path", f"the run in {location} saved no model (it did not finish)",
                    "run it to the end, or name one of its checkpoints")]


def model_spec(model: dict, task: Task) -> dict:
    spec = _model_spec(model, task)
    return {**spec, "adapter_run": adapter_runs.spec(model, spec)}


def peft_with_run(doc: dict, task: Task) -> dict | None:
    """The peft spec; an adapter that trains on (model.adapter 'train') is the run's, loaded with the model."""
    spec = peft_spec(doc["peft"], task, doc["model"])
    if doc["model"]["adapter"] == "train" and spec is not None:
        return {**spec, "continues": doc["model"]["name_or_path"]}
    return spec


def _model_spec(model: dict, task: Task) -> dict:
    return {
        "task": task.name,  # which Auto class loads it (runner/train/task_code.py)
        "name_or_path": model["name_or_path"],
        "gguf_file": model["gguf_file"],
        "gguf": gguf_spec(model),
        "revision": model["revision"],
        "init": model["init"],
        "config_overrides": model["config_overrides"],
        "task_config": dict(task.model_config),  # what the task fixes in the config (a reward model's one output)
        "dtype": model["dtype"],
        "attn_implementation": model["attn_implementation"],
        "quantization": quantization_spec(model["quantization"]),
        "trust_remote_code": model["trust_remote_code"],
        "allow_pickle_weights": model["allow_pickle_weights"],
        "tokenizer": model["tokenizer"] or model["name_or_path"],
        # the tokenizer is read from the same GGUF file unless the recipe names another
        "tokenizer_gguf_file": None if model["tokenizer"] else model["gguf_file"],
        "tokenizer_revision": model["tokenizer_revision"] if model["tokenizer"] else model["revision"],
        # the recipe key a tokenizer loading problem is reported at
        "tokenizer_key": "/model/tokenizer" if model["tokenizer"] else "/model/name_or_path",
        "chat_template": model["chat_template"],
        "ignore_mismatched_sizes": task.fresh_head,
    }


def gguf_spec(model: dict) -> dict | None:
    """What `plan` says about a GGUF file: its architecture, its tensors' storage, and the dtype they train in."""
    if not model["gguf_file"]:
        return None
    _, _, header = gguf_file.read_config(model)
    facts = gguf_file.summary(header) if header else {"architecture": None, "tensor_types": None, "quantized": None}
    return {**facts, "dequantized_on_load": True, "weights_dtype": gguf_file.weights_dtype(model, header)}


# --- training -------------------------------------------------------------------------------


def check_training(doc: dict, task: Task, fmt: str) -> list[Problem]:
    training, data = doc["training"], doc["data"]
    has_eval = data["eval"] is not None or data["eval_fraction"] is not None
    problems = []
    if not has_eval:
        if training["eval_strategy"] != "no":
            problems.append(Problem("/training/eval_strategy", f"'{training['eval_strategy']}' needs evaluation data",
                                    "add data.eval, or set data.eval_fraction, or set eval_strategy to 'no'"))
        if training["eval_on_start"]:
            problems.append(Problem("/training/eval_on_start", "needs evaluation data", "add data.eval"))
    for key, only in task.format_only_options.items():
        if training.get(key) and trained_format(task, fmt) != only:
            problems.append(Problem(f"/training/{key}", f"only applies to data.format '{only}'",
                                    f"data.format is '{fmt}'; remove {key} or change the format"))
    teacher = training.get("teacher_model_name_or_path")
    if teacher and Path(teacher).is_absolute() and not (Path(teacher) / "config.json").is_file():  # a local teacher
        problems.append(Problem("/training/teacher_model_name_or_path", f"{teacher} holds no model (no config.json)",
                                "name a model directory (a finished run's output directory is one) or a Hub id"))
    if training["bf16"] and training["fp16"]:
        problems.append(Problem("/training/fp16", "bf16 and fp16 cannot both be on", "keep one of them"))
    if training.get("packing") and training["max_length"] is None:
        problems.append(Problem("/training/max_length", "packing needs a max_length (the packed row length)"))
    return problems


def batch_section(doc: dict, task: Task, topology: Topology, model_config: dict | None) -> dict:
    batch = scale.batch_arithmetic(doc, topology, decisions.packing_may_be_decided(doc, task.name, model_config))
    if task.rewarded:  # online RL: prompts x completions per generation, and the steps they make (TRL's arithmetic)
        batch["generation"] = rewards.generation_batch(doc, topology.world_size)
        batch = rewards.rl_steps(batch, doc)
    return batch


def trainer_config(doc: dict, task: Task, fmt: str, output_dir: str) -> dict:
    """Keyword arguments of the trainer's config class: the recipe's section plus output_dir.

    Keys the runner consumes itself are left out; format-only loss options left null resolve to
    "on for their own format" (the task table's rule).
    """
    training = {**doc["training"], **format_only_settings(doc, task, fmt)}
    config = {k: v for k, v in training.items()
              if k not in task.runner_keys and (k != "bf16" or v is not None)}
    # transformers would average a NaN away in the logged loss; the runner must see it to stop the run
    config["logging_nan_inf_filter"] = False
    if doc.get("rewards"):  # TRL sums the rewards with these weights, in the order the trainer gets them
        config["reward_weights"] = [float(reward["weight"]) for reward in doc["rewards"]]
    return {"output_dir": output_dir, **config}


def runner_settings(doc: dict, task: Task, fmt: str) -> dict:
    """The training keys the runner consumes itself (e.g. assistant_only_loss: the runner masks chat turns)."""
    training = {**doc["training"], **format_only_settings(doc, task, fmt)}
    return {k: training[k] for k in task.runner_keys}


def format_only_settings(doc: dict, task: Task, fmt: str) -> dict:
    """Format-only loss options, null resolved to "on for their own format" (the task table's rule)."""
    return {key: trained_format(task, fmt) == only if doc["training"][key] is None else doc["training"][key]
            for key, only in task.format_only_options.items()}


def reference_model(doc: dict, task: Task) -> str | None:
    """Where a preference loss or the RL KL term gets its reference: `copy` is a frozen copy the runner makes of the
    start model; `reloaded`, TRL's own second load of model.name_or_path (GRPO, RLOO); `adapter-disabled`, the base
    with the trained adapter off; `adapter-copy`, a frozen copy of an earlier run's adapter that trains on."""
    if task.rewarded:  # GRPO / RLOO keep a reference only for the KL term (beta > 0)
        if doc["training"]["beta"] == 0:
            return None
    elif not task.needs_reference:
        return None
    if doc["model"]["adapter"] == "train":
        return "adapter-copy"  # TRL's frozen "ref" copy of the adapter the run saved: the run's model
    if task.rewarded:
        return "adapter-disabled" if METHODS[doc["peft"]["method"]].adapter else "reloaded"
    if METHODS[doc["peft"]["method"]].adapter:
        return "adapter-disabled"  # the base itself, with the adapter switched off: no second copy
    if doc["training"]["precompute_ref_log_probs"]:
        return "precomputed"
    return "copy"


def resolve_output_dir(doc: dict) -> str:
    chosen = (doc["output"]["dir"] or schema.defaults_of("output")["dir"]).replace("{name}", doc["name"])
    try:
        return str(Path(chosen).expanduser().absolute())
    except RuntimeError as exc:  # ~user that does not exist
        raise RecipeError([Problem("/output/dir", f"{chosen!r} is not a usable path: {exc}")]) from None


def to_json(plan: dict) -> str:
    return json.dumps(thaw(plan), indent=2, sort_keys=False)
