"""PEFT configs and partial freezing from the plan's peft spec (named so it does not shadow `peft`)."""
from __future__ import annotations

import re

from runner.errors import Problem, RecipeError
from runner import compat
from runner.plan.methods import method_of
from runner.train.models import is_quantized

HEAD = "head"  # keyword in `trainable`: every parameter outside the base model


def peft_config(spec: dict | None):
    """The peft config a trainer wraps the model with, or None (full or partial fine-tuning)."""
    if not method_of(spec).adapter or spec.get("continues"):  # an earlier run's adapter came with the model
        return None
    import peft

    classes = {"lora": peft.LoraConfig, "prompt_tuning": peft.PromptTuningConfig,
               "prefix_tuning": peft.PrefixTuningConfig, "ia3": peft.IA3Config}
    return classes[spec["method"]](**spec["kwargs"])


def freeze_all_but(model, patterns: list[str]) -> int:
    """Partial fine-tuning: only parameters named by `patterns` train. Returns how many tensors train."""
    names = [name for name, _ in model.named_parameters()]
    prefix = f"{model.base_model_prefix}."
    chosen: set[str] = set()
    for i, pattern in enumerate(patterns):
        matched = [n for n in names if (not n.startswith(prefix) if pattern == HEAD else re.search(pattern, n))]
        if not matched:
            example = ", ".join(names[-3:])
            raise RecipeError([Problem(f"/peft/trainable/{i}", f"{pattern!r} matches no parameter of the model",
                                       f"parameter names look like: {example}")])
        chosen.update(matched)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return len(chosen)


def prepare_model(model, spec: dict | None):
    """Apply what the trainer does not: freezing for `partial`, peft's k-bit preparation for a quantized base
    (runner/compat.py). Adapters themselves are left to the trainer's peft_config."""
    if spec is not None and method_of(spec).trains_base:  # partial (full fine-tuning has no spec)
        freeze_all_but(model, spec["trainable"])
    if is_quantized(model) and method_of(spec).adapter and not spec.get("continues"):  # training a new adapter
        model = compat.prepare_quantized_base(model)
    return model


def wrap_for_classification(model, spec: dict | None):
    """transformers.Trainer takes no peft_config: wrap here. SEQ_CLS keeps the new head trainable."""
    model = prepare_model(model, spec)
    if method_of(spec).adapter and not spec.get("continues"):
        from peft import get_peft_model

        return get_peft_model(model, peft_config(spec))
    return model
