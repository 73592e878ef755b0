"""Build the TRL / transformers trainer the plan names. The one place trainers are imported."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from runner import compat
from runner.data import chat_masks
from runner.data import tokencache
from runner.data.streaming import first_row
from runner.errors import Problem, RecipeError
from runner.plan.tasks import TASKS
from runner.records import checkpoints

# Optimizers that need a package beyond the base install (transformers imports it when it builds the optimizer).
OPTIMIZER_PACKAGES = {
    "adamw_bnb_8bit": "bitsandbytes", "adamw_8bit": "bitsandbytes", "paged_adamw_8bit": "bitsandbytes",
    "paged_adamw_32bit": "bitsandbytes", "lion_8bit": "bitsandbytes", "paged_lion_8bit": "bitsandbytes",
}


def launch_config(plan: dict, hardware: dict) -> dict:
    """The config kwargs with the launch-time decisions of the plan made for this machine."""
    config = dict(plan["trainer"]["config"])
    # A plan.json from before every per-machine setting was a rule in runner/plan/decisions.py (a finished run's,
    # read again by eval or quantize): what it left to the launch, decided as it was then.
    if "use_cpu" not in config:
        config["use_cpu"] = not hardware["gpus"]
    if "bf16" in plan["trainer"].get("decided_at_launch", {}) and config.get("bf16") is None:
        config["bf16"] = hardware["bf16"]
    return config


def build_trainer(plan: dict, model, tokenizer, splits, hardware: dict):
    """The task's trainer, ready to train; a setting the library rejects is reported at its recipe path."""
    config = launch_config(plan, hardware)
    check_optimizer_installed(config["optim"])
    from runner.train.task_code import TASK_CODE

    code = TASK_CODE[plan["task"]]
    config_class = code.config_class()
    trainer_class = with_chat_masks(code.trainer_class(), plan)
    trainer_class = tokencache.with_cache(trainer_class, plan, splits, tokenizer,
                                          {**config, **plan["trainer"]["runner_settings"]})
    args = rejected_as_user_error(library_name(config_class), config, lambda: config_class(**config))
    kwargs = rejected_as_user_error(f"{code.trainer_kwargs.__module__}.{code.trainer_kwargs.__name__}", config,
                                    lambda: code.trainer_kwargs(plan, model, tokenizer, splits))
    token_cache = kwargs.pop("token_cache", None)  # a task that tokenizes itself (classification) made one
    trainer = rejected_as_user_error(library_name(trainer_class), config, lambda: trainer_class(args=args, **kwargs))
    trainer.token_cache = token_cache  # evaluation rows prepared later go through the same cache
    from runner.train.callbacks import StopOnNonFiniteLoss  # imports transformers

    trainer.add_callback(StopOnNonFiniteLoss())
    schedule = compat.generation_schedule_on_resume(trainer)  # online RL: a resumed run generates when it would have
    if schedule is not None:
        trainer.add_callback(schedule)
    return trainer


def library_name(cls: type) -> str:
    """'trl.SFTConfig': how the library's users know the class (in messages)."""
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def with_chat_masks(trainer_class, plan: dict):
    """SFTTrainer, preparing conversations as runner.data.chat_masks renders and masks them (any chat template); TRL
    then takes the token ids and masks as they are (truncation, dropping examples left without loss, packing)."""
    if not TASKS[plan["task"]].causal_lm:
        return trainer_class
    loss = chat_masks.loss_options(plan)

    def masked_first(prepare, dataset, processing_class, args, packing, formatting_func, dataset_name):
        return prepare(masked_conversations(dataset, processing_class, loss, args.dataset_num_proc, dataset_name))

    return compat.around_prepare_dataset(trainer_class, masked_first)


def masked_conversations(dataset, tokenizer, loss: dict, num_proc: int | None, name: str):
    """Conversational rows as {"input_ids", "assistant_masks"}; other datasets (and prepared ones) unchanged."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):  # a stream: rendered and masked as it is read
        first = first_row(dataset)
        if first is None or "input_ids" in first or not chat_masks.masked_by_runner(first, loss):
            return dataset
        num_proc = None  # an IterableDataset maps lazily, in the dataloader
    elif (not isinstance(dataset, datasets.Dataset) or len(dataset) == 0 or "input_ids" in dataset.column_names
            or not chat_masks.masked_by_runner(dataset[0], loss)):
        return dataset
    masks = chat_masks.ChatMasks(tokenizer)

    def tokenize(row, index):
        try:
            return chat_masks.row_tokens(masks, row, loss)
        except Exception as exc:  # noqa: BLE001 - the template refuses this conversation (jinja raise_exception)
            raise RecipeError([Problem("/model/chat_template", f"the chat template cannot render example {index + 1} "
                                       f"of the {name} data: {type(exc).__name__}: {exc}", chat_masks.FIX)]) from None

    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(tokenize, with_indices=True, remove_columns=list(first_row(dataset)))
    return dataset.map(tokenize, with_indices=True, remove_columns=dataset.column_names, num_proc=num_proc,
                       desc=f"Rendering {name} conversations, masking assistant turns")


def non_finite_loss(trainer):
    """The StopOnNonFiniteLoss callback's finding, when the loss went NaN or infinite; else None."""
    from runner.train.callbacks import StopOnNonFiniteLoss

    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnNonFiniteLoss)]
    return found[0] if found and found[0].bad_step is not None else None


def check_optimizer_installed(optim: str) -> None:
    package = OPTIMIZER_PACKAGES.get(optim)
    if package and importlib.util.find_spec(package) is None:
        raise RecipeError([Problem("/training/optim", f"'{optim}' needs the {package} package, which is not installed",
                                   "pip install 'recipe-runner[qlora]', or choose adamw_torch")])


def rejected_as_user_error(who: str, config: dict, build):
    """Run `build`; a ValueError from the library is a setting it rejects, reported at that setting's path."""
    try:
        return build()
    except ValueError as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        named = [f"/training/{key}" for key in sorted(config, key=len, reverse=True) if key in message]
        raise RecipeError([Problem(named[0] if named else "/training", f"{who} rejected the settings: {message}")]) from None


MEMORY_HINT = ("lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the global batch), "
               "lower max_length, set activation_checkpointing: true, train a LoRA adapter (or QLoRA) instead of "
               "every weight, or shard across GPUs with DeepSpeed ZeRO-2/3")


@contextlib.contextmanager
def out_of_memory_as_advice(step_of):
    """Turn the accelerator running out of memory into a message naming the settings that reduce memory."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        first = (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
        raise RecipeError([Problem("/training/per_device_train_batch_size",
                                   f"ran out of accelerator memory at step {step_of()}: {first}", MEMORY_HINT)]) from None


def stop_if_diverged(trainer, plan: dict) -> None:
    """A NaN/inf loss ends the run before the broken weights are saved; checkpoints already written stay."""
    bad = non_finite_loss(trainer)
    if bad is None:
        return
    kept = checkpoints.latest_complete_checkpoint(Path(plan["output_dir"]))  # complete means finite weights
    last = f"the last good checkpoint is {kept}" if kept else "no good checkpoint was written before it"
    raise RecipeError([Problem("/training/learning_rate", f"the training loss became {bad.bad_value} at step "
                               f"{bad.bad_step}; training stopped and the diverged weights were not saved ({last})",
                               "lower learning_rate, keep max_grad_norm > 0, add warmup_steps, or prefer bf16 "
                               "over fp16")])
