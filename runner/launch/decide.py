"""Launch time: the per-machine settings of the plan decided for this machine (rules: runner/plan/decisions.py).

`resolve` probes the machine, decides, and writes the values into the plan's model spec and trainer config,
each with its reason, before anything loads; `check_same_decisions` keeps a resumed run on its first decisions.
"""
from __future__ import annotations

import importlib.util
import sys

from runner.launch.machine import probe
from runner.plan.decisions import decide, decided_values

# Decided per machine without changing what is computed: a resumed run may take another value (another GPU's
# memory may call for checkpointing, another machine has other CPUs for workers).
SAME_TRAINING = frozenset({"/training/activation_checkpointing", "/training/dataloader_num_workers"})


def apply(plan: dict, decisions: dict) -> dict:
    """The plan with the decisions written where the loaders and the trainer read them, and recorded."""
    model, config = dict(plan["model"]), dict(plan["trainer"]["config"])
    for path, decision in decisions.items():
        section, key = path.split("/")[1:]
        (model if section == "model" else config)[key] = decision["value"]
    # No dataloader_persistent_workers: with it transformers 5.23 caches one eval dataloader under the key
    # "eval" and hands it back for every other eval_dataset (retention, evaluation.data): wrong losses.
    settings = {path: {**s, **decisions.get(path, {})} for path, s in plan["fast_defaults"]["settings"].items()}
    for path in decisions.keys() - settings.keys():  # the varlen attention; use_cpu in a plan.json from before it
        settings[path] = {"recipe": None, **decisions[path]}
    return {**plan, "model": model, "trainer": {**plan["trainer"], "config": config},
            "fast_defaults": {**plan["fast_defaults"], "settings": settings}}


def resolve(plan: dict, hardware: dict) -> dict:
    """Launch time: probe the machine, decide, apply (`announce` says what was decided)."""
    if "fast_defaults" not in plan:  # a plan.json written before fast defaults existed
        return plan
    decisions = decide(plan, probe(hardware))
    check_installed(plan)
    return apply(plan, decisions)


def announce(plan: dict) -> None:
    """Say on stderr what was decided for this machine, and why (the main process of a run calls it)."""
    for path, setting in plan.get("fast_defaults", {}).get("settings", {}).items():
        if setting.get("recipe") is None and "value" in setting:
            print(f"fast default {path} = {setting['value']!r}: {setting['reason']}", file=sys.stderr)


def check_same_decisions(resolved: dict, earlier: dict) -> None:
    """Resuming where the rules decide otherwise (another GPU, no varlen kernel, a CPU) would continue with other
    batches (packing), dtype or memory settings, and the skipped-batch count would then point elsewhere: refuse."""
    from runner.errors import Problem, RecipeError

    before, now = decided_values(earlier), decided_values(resolved)
    changed = sorted(path for path in before if path in now and before[path] != now[path]
                     and path not in SAME_TRAINING)
    if changed:
        raise RecipeError([Problem(path, f"decided {now[path]!r} on this machine, but the run being resumed trained "
                                         f"with {before[path]!r} (plan.json)",
                                   "resume on a machine like the first one (same GPU kind and installed kernels); "
                                   "a launch-time setting cannot change in the middle of a run")
                           for path in changed])


def check_installed(plan: dict) -> None:
    from runner.errors import Problem, RecipeError

    if plan["trainer"]["config"].get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError([Problem("/training/use_liger_kernel", "needs the liger-kernel package, which is not "
                                   "installed", "pip install liger-kernel, or set it to null or false")])
