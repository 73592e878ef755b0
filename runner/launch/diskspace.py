"""Room on the output filesystem: what a run will write, checked before the model loads."""
from __future__ import annotations

import shutil
import sys

# bytes per saved weight, and the optimizer's per trainable parameter (AdamW: two fp32 moments)
SAVED_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, None: 4, "auto": 4}
OPTIMIZER_BYTES = 8


def space_needed(plan: dict) -> int | None:
    """Bytes the run will write at most: the final model (or adapter) plus the checkpoints kept. None: unknown
    (a Hub model whose config is not cached)."""
    params = plan.get("parameters") or {}
    if not params.get("known"):
        return None
    config = plan["trainer"]["config"]
    weights = params["trainable"] if plan["peft"] is not None else params["total"]
    model = weights * SAVED_BYTES.get(plan["model"].get("dtype"), 4)
    checkpoint = model + OPTIMIZER_BYTES * params["trainable"]
    saves = 0
    if config.get("save_strategy") not in ("no", None):
        steps = config.get("max_steps") or 0
        saves = max(1, steps // max(1, config.get("save_steps") or 1)) if steps > 0 else 1
        saves = min(saves, config.get("save_total_limit") or saves)
    return model + saves * checkpoint


def warn_if_short_of_space(plan: dict, show: bool) -> None:
    """Before the model loads: say so when the output filesystem has less room than the run will write."""
    needed = space_needed(plan)
    if needed is None or not show:
        return
    free = shutil.disk_usage(plan["output_dir"]).free
    if free < needed:
        print(f"warning: {plan['output_dir']} has {free / 2**20:,.1f} MiB free; this run writes up to about "
              f"{needed / 2**20:,.1f} MiB (model and checkpoints): it may fail when saving. Free space, lower "
              "training.save_total_limit, or choose another output.dir", file=sys.stderr)
