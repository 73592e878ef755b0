"""The plan for a topology: the batch across processes, steps per epoch, and combinations refused before launch.

The recipe never names a topology; `plan --world-size N [--accelerate-config FILE]` and the launcher's
environment at run time give one (runner/plan/topology.py). Pure: no torch, reads at most the training file's
line count.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from runner.plan import deepspeed_json
from runner.recipe.sources import split_sources
from runner.errors import Problem
from runner.plan.methods import METHODS
from runner.plan.topology import Topology

CHEAP_COUNT_BYTES = 256 * 2**20  # count rows of local .jsonl/.json files up to this size; larger ones cost too much
OFFLOAD_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # what DeepSpeed's CPU AdamW stands in for


def check_topology(doc: dict, topology: Topology) -> list[Problem]:
    """Combinations that are known to fail (or silently do the wrong thing) on this topology, with the reason."""
    return (_check_quantized(doc, topology) + _check_offload(doc, topology) + _check_zero3_save(doc, topology)
            + deepspeed_json.check(doc, topology))


def _check_quantized(doc: dict, topology: Topology) -> list[Problem]:
    quant = doc["model"]["quantization"]
    engine = topology.shards_weights
    if engine is None or quant["method"] == "none":
        return []
    if quant["method"] == "bnb_8bit":
        return [Problem("/model/quantization/method", f"8-bit weights cannot be sharded by {engine}",
                        "use bnb_4bit with bnb_4bit_quant_storage (QLoRA), or DDP / ZeRO-2, which keep "
                        "whole weights on every GPU")]
    problems = []
    storage, compute = quant["bnb_4bit_quant_storage"], quant["bnb_4bit_compute_dtype"]
    dtype = doc["model"]["dtype"]
    wanted = compute
    if storage != wanted or dtype not in (None, "auto", storage):
        problems.append(Problem("/model/quantization/bnb_4bit_quant_storage",
                        f"QLoRA under {engine} needs the packed 4-bit weights stored in the same float dtype as the "
                        f"rest of the model (got {storage}, compute dtype {compute}, "
                        f"model.dtype {dtype}): {engine} flattens all weights of a layer into one tensor and "
                        "cannot mix uint8 with floats",
                        f"set bnb_4bit_quant_storage and bnb_4bit_compute_dtype to '{wanted}'"
                        + ("" if dtype in (None, "auto", wanted) else f" and model.dtype to '{wanted}'")))
    if doc.get("peft", {}).get("use_dora"):
        # Seen with 2 CPU processes under ZeRO-3: a bf16 base fails as DoRA reads the partitioned 4-bit weight
        # ("'Params4bit' object has no attribute 'ds_status'"); an fp32 base fails on mixed trainable dtypes (TRL
        # casts LoRA A/B to bf16, not DoRA's magnitude). FSDP2's reduce-scatter asserts one gradient dtype (torch
        # 2.13 source) and its all-gather has the same partitioned weight; not run on a GPU.
        problems.append(Problem("/peft/use_dora", f"DoRA on a 4-bit base fails under {engine}: DoRA reads the whole "
                                "quantized weight, which the engine has split across processes (and under TRL its "
                                "magnitude vector stays fp32 while the LoRA matrices are cast to bf16)",
                                "set use_dora to false (plain QLoRA trains under ZeRO-3), or use DDP / ZeRO-2"))
    return problems


def _check_offload(doc: dict, topology: Topology) -> list[Problem]:
    """An offloaded optimizer steps on the CPU: the shipped config has DeepSpeed's CPU AdamW do it (a GPU
    optimizer cannot, and DeepSpeed refuses most others), taking the recipe's AdamW settings."""
    optim = doc["training"]["optim"]
    if topology.offload_optimizer and optim is not None and optim not in OFFLOAD_OPTIMIZERS:  # null: fused AdamW
        return [Problem("/training/optim", f"'{optim}' cannot step an optimizer offloaded to CPU memory: "
                                           "DeepSpeed's CPU AdamW does that step",
                        "set optim to adamw_torch (its learning rate, betas, epsilon and weight decay apply), "
                        "or use a config without offload_optimizer")]
    return []


def _check_zero3_save(doc: dict, topology: Topology) -> list[Problem]:
    """Without the 16-bit gather, transformers' save_model under ZeRO-3 writes an empty state dict plus DeepSpeed's
    own shards for a whole model: a run directory from_pretrained cannot load (the "partial save" users report).
    An adapter is saved through DeepSpeed's consolidated state dict of the trainable parameters, which does not
    need the gather (checked: a LoRA run with it off saved every adapter tensor whole)."""
    if topology.engine != "deepspeed" or topology.zero_stage != 3 or topology.zero3_save_16bit_model is not False:
        return []
    if not METHODS[doc["peft"]["method"]].trains_base:
        return []
    return [Problem("zero_optimization.stage3_gather_16bit_weights_on_model_save",
                    "ZeRO-3 without the 16-bit gather on save: the run would end with DeepSpeed shards and no model "
                    "weights that from_pretrained loads (transformers saves an empty state dict in that case)",
                    'set "stage3_gather_16bit_weights_on_model_save": true in the DeepSpeed JSON, as '
                    "accelerate_configs/deepspeed/zero3.json does (or zero3_save_16bit_model: true in an Accelerate "
                    "YAML that has no deepspeed_config_file)")]


PACKING_AT_LAUNCH = ("training.packing is null and may be decided on at launch (a GPU with PyTorch's varlen kernel): "
                     "packed rows then depend on the token lengths; set packing to false or true to know beforehand")


def batch_arithmetic(doc: dict, topology: Topology, packing_at_launch: bool = False) -> dict:
    """Per-device and global batch for this topology, and optimizer steps per epoch when the row count is cheap.

    packing_at_launch: packing is left to the launch and may be switched on there; the count for unpacked rows
    is then only conditional (steps_per_epoch_if_not_packed)."""
    training = doc["training"]
    per_device, accum, world = (training["per_device_train_batch_size"], training["gradient_accumulation_steps"],
                                topology.world_size)
    batch = {
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accum,
        "examples_per_step_per_process": per_device * accum,
        "world_size": world,
        "global_batch_size": per_device * accum * world,
        "note": f"{per_device} per device x {accum} accumulation x {world} process{'es' * (world > 1)} = "
                f"{per_device * accum * world} examples per optimizer step",
    }
    rows, why = train_rows(doc)
    batch["train_rows"] = rows
    if rows is None:
        batch["steps_per_epoch"] = None
        batch["steps_per_epoch_unknown"] = why
    else:
        # transformers: each process gets ceil(rows / world / per_device) batches; an optimizer step takes
        # `accum` of them, a last partial group counts as a step
        batches = math.ceil(rows / world / per_device)
        batch["steps_per_epoch"] = max(math.ceil(batches / accum), 1)
        if packing_at_launch:
            batch.update(steps_per_epoch=None, steps_per_epoch_unknown=PACKING_AT_LAUNCH,
                         steps_per_epoch_if_not_packed=max(math.ceil(batches / accum), 1))
    if training["max_steps"] > 0:
        batch["total_steps"] = training["max_steps"]
    elif batch["steps_per_epoch"] is not None:
        batch["total_steps"] = math.ceil(batch["steps_per_epoch"] * training["num_train_epochs"])
    elif "steps_per_epoch_if_not_packed" in batch:
        batch["total_steps_if_not_packed"] = math.ceil(batch["steps_per_epoch_if_not_packed"]
                                                       * training["num_train_epochs"])
    return batch


def train_rows(doc: dict) -> tuple[int | None, str | None]:
    """Training rows as the trainer will see them, when local files tell cheaply; else None and why not."""
    data, training = doc["data"], doc["training"]
    if training.get("packing"):
        return None, "packing: the row count depends on the token lengths"
    sources = split_sources(data, "train")
    if isinstance(data["train"], list) and data["mixture"]["strategy"] == "interleave":
        return None, "a sampled mixture: its size is known once it is drawn (data.mixture.expected_rows estimates it)"
    counted = [source_rows(source) for _, source in sources]
    unknown = next((why for rows, why in counted if rows is None), None)
    if unknown:
        return None, unknown
    rows = sum(rows for rows, _ in counted)
    if data["eval_fraction"] is not None:  # datasets' train_test_split: ceil(fraction * rows) go to eval
        rows -= math.ceil(data["eval_fraction"] * rows)
    return rows, None


def source_rows(source: dict) -> tuple[int | None, str | None]:
    """Rows one source gives (after its `limit`), when a local file tells cheaply; else None and why not."""
    if source.get("streaming"):
        return None, "streamed: its size is known only once it has been read"
    if "path" not in source:
        return None, "Hub dataset: its size is known once it loads"
    path = Path(source["path"])
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return None, f"{path.suffix or 'this'} files are counted when they load"
    if path.stat().st_size > CHEAP_COUNT_BYTES:
        return None, "the file is too large to count before loading"
    rows = _count_rows(path)
    if rows is None:
        return None, f"cannot count the rows of {path}"
    return (rows if source["limit"] is None else min(rows, source["limit"])), None


def _count_rows(path: Path) -> int | None:
    try:
        if path.suffix == ".jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        parsed = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return len(parsed) if isinstance(parsed, list) else None
