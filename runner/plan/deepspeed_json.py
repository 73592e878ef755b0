"""A user's DeepSpeed JSON against the recipe, checked by `plan` before anything launches.

transformers fills the JSON's "auto" values from the training arguments and, at the first training
step (after the model has loaded), stops with "DeepSpeed config values that mismatch TrainingArguments"
when a value set by hand differs. Two sections do worse: they silently win. A "scheduler" section
replaces the recipe's lr_scheduler_type and warmup; an "optimizer" section replaces training.optim.
Both are reported here with the recipe path, the JSON key and the fix. Pure: reads the JSON file only.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from runner.errors import Problem, RecipeError
from runner.plan.topology import Topology

ADAMW_TYPES = ("adam", "adamw")  # DeepSpeed's names for the algorithm the recipe's AdamW choices run
ADAMW_OPTIMS = (None, "adamw_torch", "adamw_torch_fused")  # null: fused AdamW on a GPU
AUTO_HINT = "set it to \"auto\" in the DeepSpeed JSON (transformers then takes the recipe's value), or make the two equal"


def check(doc: dict, topology: Topology) -> list[Problem]:
    try:
        config, path = _read(topology)
    except (OSError, ValueError) as exc:
        return [Problem("deepspeed_config_file", f"cannot read {topology.deepspeed_config_file}: {exc}")]
    if config is None:
        return []
    return (_mismatches(doc, topology, config, path.name) + _scheduler(doc, config, path.name)
            + _optimizer(doc, topology, config, path.name))


def check_precision(doc: dict, topology: Topology, bf16: bool, fp16: bool) -> None:
    """Launch time, before the model loads: a bf16 / fp16 the recipe left to the machine, against the JSON."""
    try:
        config, path = _read(topology)
    except (OSError, ValueError):
        return  # the plan reported it
    if config is None:
        return
    decided = {**doc, "training": {**doc["training"], "bf16": bf16, "fp16": fp16}}
    problems = _mismatches(decided, topology, config, path.name, keys=("bf16.enabled", "fp16.enabled"),
                           source="the value decided for this machine")
    if problems:
        raise RecipeError([replace(p, hint="set training.bf16 / fp16 in the recipe to what the DeepSpeed JSON says, "
                                           "or set the JSON's to \"auto\"") for p in problems])


def _read(topology: Topology) -> tuple[dict | None, Path | None]:
    """The launch's DeepSpeed JSON, or (None, None) when it has none."""
    if topology.engine != "deepspeed" or not topology.deepspeed_config_file:
        return None, None
    path = Path(topology.deepspeed_config_file)
    return json.loads(path.read_text()), path


def _pairs(doc: dict) -> list[tuple[str, str, object]]:
    """(DeepSpeed key, recipe path, the recipe's value): the keys transformers 5.23 matches against its arguments
    (HfTrainerDeepSpeedConfig.trainer_config_process); train_batch_size is per device x accumulation x processes."""
    t = doc["training"]
    return [
        ("train_micro_batch_size_per_gpu", "/training/per_device_train_batch_size", t["per_device_train_batch_size"]),
        ("gradient_accumulation_steps", "/training/gradient_accumulation_steps", t["gradient_accumulation_steps"]),
        ("gradient_clipping", "/training/max_grad_norm", t["max_grad_norm"]),
        ("optimizer.params.lr", "/training/learning_rate", t["learning_rate"]),
        ("optimizer.params.betas", "/training/adam_beta1", [t["adam_beta1"], t["adam_beta2"]]),
        ("optimizer.params.eps", "/training/adam_epsilon", t["adam_epsilon"]),
        ("optimizer.params.weight_decay", "/training/weight_decay", t["weight_decay"]),
        # null bf16: decided at launch, and checked again then (check_precision)
        ("bf16.enabled", "/training/bf16", t["bf16"]),
        ("fp16.enabled", "/training/fp16", t["fp16"]),
    ]


def _mismatches(doc: dict, topology: Topology, config: dict, name: str, keys=None,
                source: str = "the recipe") -> list[Problem]:
    t = doc["training"]
    per_device, accumulation, world = t["per_device_train_batch_size"], t["gradient_accumulation_steps"], \
        topology.world_size
    batch = ("train_batch_size", "/training/per_device_train_batch_size", per_device * accumulation * world)
    problems = []
    for key, recipe_path, wanted in _pairs(doc) + [batch]:
        found = _get(config, key)
        if (keys is not None and key not in keys) or found is None or found == "auto" or wanted is None:
            continue
        whose = (f"the recipe's {per_device} per device x {accumulation} accumulation x {world} process(es)"
                 if key == "train_batch_size" else source)
        if found != wanted:  # transformers' own test: `ds_val != hf_val`, no coercion ("4" is not 4)
            problems.append(Problem(recipe_path, f"{name} sets {key} = {json.dumps(found)}, {whose} "
                                                 f"{json.dumps(wanted)}: transformers would stop the run at its first "
                                                 "step, after loading the model", AUTO_HINT))
    return problems


def _scheduler(doc: dict, config: dict, name: str) -> list[Problem]:
    if "scheduler" not in config:
        return []
    kind = (config["scheduler"] or {}).get("type", "?")
    return [Problem("/training/lr_scheduler_type",
                    f"{name} has a \"scheduler\" section ({kind}): DeepSpeed's scheduler would silently replace the "
                    f"recipe's lr_scheduler_type '{doc['training']['lr_scheduler_type']}' and its warmup",
                    "delete the \"scheduler\" section from the DeepSpeed JSON; the recipe's schedule then applies")]


def _optimizer(doc: dict, topology: Topology, config: dict, name: str) -> list[Problem]:
    optim = doc["training"]["optim"]
    if "optimizer" not in config or topology.offload_optimizer:  # offloaded: runner.plan.scale's own check speaks
        return []
    kind = str((config["optimizer"] or {}).get("type", "?"))
    if kind.lower() in ADAMW_TYPES and optim in ADAMW_OPTIMS:
        return []
    return [Problem("/training/optim",
                    f"{name} has an \"optimizer\" section ({kind}): DeepSpeed's optimizer would silently replace "
                    f"the recipe's optim '{optim}'",
                    "delete the \"optimizer\" section from the DeepSpeed JSON (the recipe's optimizer then runs), "
                    "or set optim to adamw_torch with an AdamW section")]


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config
