"""Workarounds for the library versions the runner is tested with (constraints.txt), each in one place.

Every entry says which version it is for and how to tell it can go. Nothing else in runner/ works around a
library's version; facts about a library the estimates rely on (tensor shapes, chunk sizes) stay with them.
"""
from __future__ import annotations


def gguf_load_kwargs(gguf_file: str) -> dict:
    """from_pretrained keyword arguments that load a GGUF file as a plain, trainable, saveable model.

    transformers 5.23 loads a GGUF file through `GgufHfQuantizer`, which keeps the quantizer on the model
    unless told to dequantize: its `is_trainable` is False (the Trainer refuses to fine-tune such a model)
    and its `is_serializable` is False (`save_pretrained` raises "quantized with gguf and is not
    serializable"). With the `kernels` package installed it would even keep the weights in packed GGUF
    blocks. `GgufConfig(dequantize=True)` unpacks every weight and makes transformers drop the quantizer
    and `config.quantization_config` after loading. `plain_gguf_model` checks that it did.
    Can go when a GGUF-loaded model trains and saves without it (GgufHfQuantizer.is_trainable/is_serializable).
    """
    from transformers import GgufConfig

    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def plain_gguf_model(model):
    """The GGUF-loaded model with no quantizer left on it: what trains, and what save_pretrained writes as
    plain safetensors. Drops what transformers 5.23 keeps when it does not honour `dequantize`
    (`model.hf_quantizer`, `config.quantization_config`: the fix checked by hand on 5.23 before
    GgufConfig(dequantize=True) was used)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")})
    if packed:  # weights still in GGUF blocks cannot take gradients or be saved as safetensors
        raise RuntimeError(f"the GGUF weights were not dequantized on load (modules {packed}); "
                           "see runner/compat.py gguf_load_kwargs")
    return model


def around_prepare_dataset(trainer_class, wrap):
    """A subclass of a TRL trainer whose dataset preparation goes through `wrap(prepare, dataset, *args)`, where
    `prepare(dataset)` is TRL's own; the class itself when it has no such step (transformers' Trainer).

    TRL 1.16 has no public hook between loading rows and tokenizing them: SFTTrainer and DPOTrainer call their
    private `_prepare_dataset(dataset, processing_class, args, ...)` from `__init__`. The runner uses it twice:
    to hand SFTTrainer conversations it rendered and masked itself (runner/data/chat_masks.py) and to serve
    prepared datasets from the tokenization cache (runner/data/tokencache.py).
    Can go when TRL offers a public preparation hook; tests/tiny/test_chat_masks.py and test_tokencache.py fail
    first if the private method's signature changes.
    """
    if not hasattr(trainer_class, "_prepare_dataset"):
        return trainer_class

    def _prepare_dataset(self, dataset, *args, **kwargs):
        def prepare(rows):
            return super(cls, self)._prepare_dataset(rows, *args, **kwargs)

        return wrap(prepare, dataset, *args, **kwargs)

    cls = type(trainer_class.__name__, (trainer_class,), {"_prepare_dataset": _prepare_dataset,
                                                           "__module__": trainer_class.__module__})
    return cls


def evaluation_must_wait_for_train(trainer) -> bool:
    """Several processes, DeepSpeed or FSDP: the model is wrapped when train() starts, and an evaluation before
    that breaks train(). Seen with transformers 5.23: under DDP the ranks then trained unsynchronised copies,
    each on its own batches; under DeepSpeed train() found an inference engine and failed. The runner then takes
    its before-training measurements at the start of train() instead (runner/evaluate/measure.py).
    Can go when an evaluation before train() leaves the engine's wrapping to train() (check DDP with two CPU
    processes: tests/tiny/test_ranks.py compares the ranks' weights after training).
    """
    return bool(trainer.args.world_size > 1 or getattr(trainer, "is_deepspeed_enabled", False)
                or getattr(trainer, "is_fsdp_enabled", False))


def prepare_quantized_base(model):
    """peft's k-bit preparation of a 4/8-bit base (frozen, its non-quantized parameters in float32, input
    gradients on), without its activation checkpointing (TrainingArguments' activation_checkpointing owns that).
    TRL 1.16's trainers do not call prepare_model_for_kbit_training (they only cast a quantized model's adapter to
    bf16 and enable input gradients under activation checkpointing).
    Can go when TRL prepares a k-bit base itself (its trainers' `_prepare_peft_model`).
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def end_process_group(state) -> None:
    """Destroy the process group before exit: with gloo (torch 2.13, several CPU processes) rank 0 otherwise
    sometimes aborts at interpreter exit after a finished run. Can go when two-CPU-process runs exit cleanly
    without it (tests/tiny/test_ranks.py runs them)."""
    if state.num_processes > 1:
        state.destroy_process_group()


def generation_schedule_on_resume(trainer):
    """A callback that puts a resumed GRPO / RLOO run back on its generation schedule; None for other trainers.

    TRL 1.16's online RL trainers generate when their micro-step counter `_step` is a multiple of
    steps_per_generation x num_iterations and reuse the buffered completions in between; neither the counter nor
    the buffer is saved in a checkpoint. A resumed run restarts the counter at 0, so where a checkpoint fell inside
    a generation's reuse (num_iterations > 1, or steps_per_generation above gradient_accumulation_steps) every later
    generation came one or more steps early or late: seen on the tiny model with num_iterations 2, checkpoint-3,
    the resumed run generated at steps 4, 6, 8 where the uninterrupted one did at 5, 7. Setting the counter to the
    micro-steps done keeps the schedule; the lost buffer is regenerated at the first resumed step (TRL's own
    fallback), so the completions of that one step are fresh ones, not the ones an uninterrupted run reuses.
    With one generation per optimizer step (the default: steps_per_generation = gradient_accumulation_steps,
    num_iterations 1) the counter changes nothing and a resumed run repeats an uninterrupted one exactly
    (tests/tiny/test_online_rl_ranks.py). TRL's DistillationTrainer keeps the same counter but generates every
    gradient_accumulation_steps micro-steps, so there the restored counter changes nothing.
    Can go when TRL saves and restores `_step` (and its buffer).
    """
    from transformers import TrainerCallback

    if not (hasattr(trainer, "_step") and hasattr(trainer, "_buffered_inputs")):
        return None

    class GenerationSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # state is the checkpoint's by now (transformers loads it before on_train_begin); 0 on a fresh start
            trainer._step = state.global_step * args.gradient_accumulation_steps

    return GenerationSchedule()


def whole_model_loading():
    """A context in which from_pretrained loads a model whole, even inside a DeepSpeed ZeRO-3 run.

    Once a ZeRO-3 TrainingArguments exists, transformers 5.23 loads every model under `zero.Init`, its parameters
    partitioned across ranks and usable only inside a DeepSpeed engine. The reward models score completions outside
    any engine (runner/train/rewards.py model_scorer, which replaces TRL 1.16's GRPO scoring of a model reward: that
    one reads the score where RewardTrainer never trained it, without the EOS token it appends), so each rank loads
    them whole. Can go with model_scorer, when TRL scores a model reward on the ids RewardTrainer trained on.
    """
    import contextlib

    from transformers.integrations import deepspeed

    @contextlib.contextmanager
    def loading():
        kept = deepspeed._hf_deepspeed_config_weak_ref
        deepspeed.unset_hf_deepspeed_config()
        try:
            yield
        finally:
            deepspeed._hf_deepspeed_config_weak_ref = kept

    return loading()
