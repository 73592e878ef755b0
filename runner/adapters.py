"""PEFT config from the plan's peft spec (named so it does not shadow the `peft` package)."""
from __future__ import annotations

from .tasks import import_dotted


def peft_config(spec: dict | None):
    """The peft config object the trainer wraps the model with, or None for full fine-tuning."""
    if spec is None:
        return None
    return import_dotted(spec["class"])(**spec["kwargs"])
