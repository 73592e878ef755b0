"""The task table: everything that differs between run kinds lives here, and only here.

Other modules look a task up instead of branching on its name. Classes are named by dotted
path so that this table (and `plan`) never imports torch, transformers or trl.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Task:
    name: str
    trainer_class: str  # built by trainer.build_trainer
    config_class: str  # receives the recipe's `training` section as keyword arguments
    model_class: str  # the AutoModel class that loads or builds the model
    peft_task_type: str  # peft's TaskType for adapters on this model class
    # data format -> the canonical columns the trainer reads
    formats: Mapping[str, tuple[str, ...]]
    # training key -> the only data format where setting it to true makes sense
    format_only_options: Mapping[str, str] = field(default_factory=dict)


TASKS: Mapping[str, Task] = MappingProxyType({
    "sft": Task(
        name="sft",
        trainer_class="trl.SFTTrainer",
        config_class="trl.SFTConfig",
        model_class="transformers.AutoModelForCausalLM",
        peft_task_type="CAUSAL_LM",
        formats=MappingProxyType({
            "text": ("text",),
            "prompt_completion": ("prompt", "completion"),
            "messages": ("messages",),
        }),
        format_only_options=MappingProxyType({
            "completion_only_loss": "prompt_completion",
            "assistant_only_loss": "messages",
        }),
    ),
})


def import_dotted(name: str):
    """'trl.SFTTrainer' -> the class. Only called once a run really needs the class."""
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)
