"""Build the TRL / transformers trainer the plan names. The one place trainers are imported."""
from __future__ import annotations

from . import adapters
from .tasks import import_dotted


def launch_config(plan: dict, hardware: dict) -> dict:
    """The config kwargs with the launch-time decisions of the plan made for this machine."""
    config = dict(plan["trainer"]["config"])
    config["use_cpu"] = not hardware["gpus"]
    if "bf16" in plan["trainer"]["decided_at_launch"]:
        config["bf16"] = hardware["bf16"]
    return config


def build_trainer(plan: dict, model, tokenizer, train_dataset, eval_dataset, hardware: dict, callbacks=()):
    config_class = import_dotted(plan["trainer"]["config_class"])
    trainer_class = import_dotted(plan["trainer"]["class"])
    args = config_class(**launch_config(plan, hardware))
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=adapters.peft_config(plan["peft"]),
        callbacks=list(callbacks),
    )
