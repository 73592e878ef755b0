"""`quantize RUN_DIR --bits 8|4`: post-training quantization of a trained model with bitsandbytes.

The run's model (an adapter merged into its base first) is quantized in memory and saved with its
quantization config, so `from_pretrained(out)` loads it quantized. The record says what it costs
and saves: size on disk and in memory before and after, and, when the recipe has an evaluation,
its metrics on the full-precision and on the quantized model, measured by the same trainer.
"""
from __future__ import annotations

from pathlib import Path

from runner.records import outputs
from runner.commands.finished import read_run, saved_tokenizer
from runner.commands.merge import free_output, merged_model, write_model_dir

GIB = 1024 ** 3


def bnb_settings(bits: int, dtype: str) -> dict:
    """The plan-style quantization spec: NF4 with double quantization computing in the model's dtype, or int8."""
    if bits == 4:
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                  "bnb_4bit_compute_dtype": dtype}
        return {"method": "bnb_4bit", "kwargs": kwargs}
    return {"method": "bnb_8bit", "kwargs": {"load_in_8bit": True}}


def quantize(run_dir: Path, bits: int, out: Path | None) -> dict:
    from runner.train.models import quantize_random

    plan = read_run(run_dir)
    out = free_output(out or run_dir.with_name(f"{run_dir.name}-{bits}bit"))
    model, note = merged_model(run_dir, plan)
    dtype = str(model.dtype).removeprefix("torch.")
    before = {"dtype": dtype, "memory_bytes": model.get_memory_footprint(), "disk_bytes": tensor_bytes(model)}
    quantized = quantize_random(_unwrapped_copy(model), {"quantization": bnb_settings(bits, dtype)})
    measured = measure_both(plan, run_dir, model, quantized)

    def record_of(staged: Path) -> dict:
        after = {"dtype": f"bnb {bits}-bit", "memory_bytes": quantized.get_memory_footprint(),
                 "disk_bytes": sum(f.stat().st_size for f in staged.glob("*.safetensors"))}
        return {"from": str(run_dir), "bits": bits, "source": note, "before": before, "after": after,
                "disk_ratio": round(after["disk_bytes"] / before["disk_bytes"], 4),
                "memory_ratio": round(after["memory_bytes"] / before["memory_bytes"], 4),
                "metrics": measured, "created_at": outputs.now(),
                "notes": ["disk before: the full-precision model's tensors as safetensors would store them; "
                          "after: the .safetensors files written"]}

    return write_model_dir(out, quantized, saved_tokenizer(plan, run_dir, "RUN_DIR"), "quantize.json", record_of)


def tensor_bytes(model) -> int:
    """Bytes of the model's tensors, a tied tensor (input and output embeddings) once, as safetensors stores it."""
    unique = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _unwrapped_copy(model):
    """quantize_random consumes its model's weights; the full-precision one is still measured afterwards."""
    import copy

    return copy.deepcopy(model)


def measure_both(plan: dict, run_dir: Path, model, quantized) -> dict | None:
    """The recipe's metrics before and after quantization, or None when the recipe has no evaluation.

    transformers' Trainer refuses to be built around a quantized model without an adapter (it checks
    for training), so it is built around the full-precision model and then given the quantized one.
    """
    if not plan["evaluation"]["metrics"]:
        return None
    from runner.evaluate import measure as evaluation
    from runner.train import session

    plan, hardware = session.for_this_machine(plan)
    plan, splits, _ = session.load_data(plan)
    if splits.evaluation is None:
        return None
    tokenizer = saved_tokenizer(plan, run_dir, "RUN_DIR")
    adjusted, splits, trainer = session.measuring_trainer(plan, run_dir, model, tokenizer, splits, hardware)
    before = evaluation.measure(trainer, adjusted, splits)
    trainer = session.trainer_for(adjusted, no_op_adapter(quantized, plan), tokenizer, splits, hardware)
    after = evaluation.measure(trainer, adjusted, splits)
    return {"before": before, "after": after}


def no_op_adapter(model, plan: dict):
    """The quantized model inside a LoRA adapter whose update is exactly zero (B starts at zero).

    transformers' Trainer refuses to wrap a quantized model that has no adapter (it guards training),
    and evaluating through the same kind of trainer as before quantization keeps the two figures
    comparable. Rank 1 on every linear layer: base output + 0 is the base output, bit for bit.
    """
    from peft import LoraConfig, get_peft_model

    from runner.plan.tasks import TASKS

    task = TASKS[plan["task"]]
    config = LoraConfig(r=1, target_modules="all-linear", task_type=task.peft_task_type, lora_dropout=0.0)
    return get_peft_model(model, config).eval()
