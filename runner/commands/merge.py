"""`merge RUN_DIR`: an adapter run folded into its base, saved as a plain model (no peft needed to load it).

A QLoRA run is merged into the base loaded at the training compute dtype (bnb_4bit_compute_dtype),
not into 4-bit weights: adding a low-rank update to NF4 blocks would re-quantize it away. The
output directory is written under a temporary name and renamed at the end; an existing one is
never touched.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from runner.records import outputs
from runner.errors import Problem, RecipeError
from runner.commands.finished import load_trained, read_run, saved_tokenizer
from runner.plan.methods import METHODS, method_of


def free_output(out: Path, where: str = "--out") -> Path:
    """The output directory, which must not exist yet: nothing a user owns is replaced."""
    out = out.expanduser().absolute()
    if out.exists():
        raise RecipeError([Problem(where, f"{out} already exists; refusing to write into it",
                                   "choose another --out, or move the earlier result away")])
    inside = next((p for p in out.parents if outputs.read_manifest(p) is not None), None)
    if inside is not None:  # a later --overwrite of that run would take it along, a --resume refuse the run
        raise RecipeError([Problem(where, f"{out} is inside the run directory {inside}",
                                   "choose an --out outside any run directory, e.g. beside it")])
    return out


def merge_dtype(plan: dict) -> str:
    """The dtype the base is loaded in for merging: the compute dtype for 4-bit, else the recipe's dtype."""
    quantization = plan["model"].get("quantization") or {}
    return quantization.get("kwargs", {}).get("bnb_4bit_compute_dtype") or plan["model"]["dtype"]


def merged_model(run_dir: Path, plan: dict):
    """The run's model at full precision with any adapter merged in, and a sentence saying how."""
    method = (plan["peft"] or {}).get("method", "none")
    if METHODS[method].soft_prompt:
        raise RecipeError([Problem("RUN_DIR", f"a {method} adapter has no weights to merge into the base: it adds "
                                              "virtual tokens to every input", "load it with peft's "
                                              "AutoPeftModelForCausalLM.from_pretrained(RUN_DIR) instead")])
    full = copy.deepcopy(plan)
    full["model"]["quantization"] = None
    full["model"]["dtype"] = merge_dtype(plan)
    model = load_trained(run_dir, full)
    if not METHODS[method].mergeable:
        return model, f"full model ({method} fine-tuning): nothing to merge"
    note = f"{method} adapter merged into the base at {full['model']['dtype']}"
    if (plan["model"].get("quantization") or {}).get("method") == "bnb_4bit":
        note += " (QLoRA: the training compute dtype, not the 4-bit weights the adapter was trained on)"
    elif (plan["model"].get("quantization") or {}).get("method") == "bnb_8bit":
        note += " (trained on 8-bit weights: merged into the unquantized base)"
    return model.merge_and_unload(), note


def staging(out: Path) -> Path:
    """A hidden sibling of `out` to write into; renamed to `out` when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    if out.exists():  # created meanwhile by someone else: keep theirs
        shutil.rmtree(tmp)
        raise RecipeError([Problem("--out", f"{out} appeared while writing; the result was discarded")])
    tmp.rename(out)


def write_model_dir(out: Path, model, tokenizer, record_file: str, record_of) -> dict:
    """Model (safetensors), tokenizer and a JSON record, written in a staging directory and moved to `out` in
    one rename: a failure leaves nothing at `out`. `record_of(staged_dir)` runs once the files are there."""
    tmp = staging(out)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = record_of(tmp)
        outputs.write_json(tmp / record_file, record)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**record, "output_dir": str(out)}


def merge(run_dir: Path, out: Path | None) -> dict:
    plan = read_run(run_dir)
    method = (plan["peft"] or {}).get("method", "none")
    if not method_of(plan["peft"]).adapter or not (METHODS[method].mergeable or METHODS[method].soft_prompt):
        raise RecipeError([Problem("RUN_DIR", f"the run trained the model itself ({method} fine-tuning): there is "
                                              "no adapter to merge", "load RUN_DIR with from_pretrained as it is")])
    out = free_output(out or run_dir.with_name(run_dir.name + "-merged"))
    model, note = merged_model(run_dir, plan)
    record = {"from": str(run_dir), "note": note, "dtype": str(model.dtype).removeprefix("torch."),
              "parameters": sum(p.numel() for p in model.parameters()), "created_at": outputs.now()}
    return write_model_dir(out, model, saved_tokenizer(plan, run_dir, "RUN_DIR"), "merge.json", lambda _: record)
