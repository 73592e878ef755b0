"""The task table: everything that differs between run kinds lives here, and only here.

Other modules look a task up instead of branching on its name. Classes and functions are named
by dotted path so that this table (and `plan`) never imports torch, transformers or trl.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Format:
    """A data format: the canonical fields a source must provide, and how rows become trainer examples."""

    fields: tuple[str, ...]
    optional: tuple[str, ...] = ()
    # runner.data.load function turning one canonical row into what the trainer reads; None: rows as they are
    convert: str | None = None
    becomes: str | None = None  # the format the converted rows have (what loss options are judged by)
    # canonical fields (after conversion) that hold the prompt and the reference answer, for generative metrics
    prompt_and_answer: str | None = None  # runner.evaluate.measure function name, or None: not generative


@dataclass(frozen=True)
class Task:
    name: str
    trainer_class: str
    config_class: str  # receives the recipe's `training` section (less `runner_keys`) as keyword arguments
    model_class: str  # the AutoModel class that loads or builds the model
    peft_task_type: str  # peft's TaskType for adapters on this model class
    formats: Mapping[str, Format]  # the first is the default
    builder: str  # function(plan, model, tokenizer, splits) -> the trainer's keyword arguments but `args`
    default_metrics: tuple[str, ...]
    metrics: tuple[str, ...]  # the ones that make sense for this task
    # training keys the runner consumes itself (not fields of config_class)
    runner_keys: tuple[str, ...] = ()
    # training key -> the only data format where setting it to true makes sense; null resolves to
    # "true for that format, false otherwise"
    format_only_options: Mapping[str, str] = field(default_factory=dict)
    # a language-model loss over the tokens a mask marks (perplexity, retention; conversations masked by
    # runner.data.chat_masks; examples truncated to no loss token dropped by TRL, so the preflight counts them)
    causal_lm: bool = True
    # function(plan, splits) -> (splits, model config updates), run after loading the data; None: nothing
    prepare_data: str | None = None
    # function(trainer, plan, dataset) -> what trainer.evaluate takes for canonical rows; None: the rows
    eval_features: str | None = None
    needs_reference: bool = False  # the loss compares with a frozen reference model (DPO)
    # function(model, tokenizer, plan, texts, generation settings) -> one result dict per text (`predict`)
    predict: str = "runner.commands.inference.generate_texts"
    head_module: str = "lm_head"  # the output layer's name (a LoRA target beyond the transformer blocks)
    fresh_head: bool = False  # a checkpoint's own head of another shape is replaced by a new one
    # function(trainer, plan, dataset) -> (predicted label ids, reference ids), for label metrics
    label_predictions: str | None = None
    uses_chat_template: bool = True  # chat formats render through the tokenizer's (or the recipe's) template


GENERATIVE = ("exact_match", "rouge", "bleu")
LM_METRICS = ("loss", "perplexity")

_CHAT = {
    "text": Format(("text",)),
    "prompt_completion": Format(("prompt", "completion"), prompt_and_answer="prompt_completion"),
    "messages": Format(("messages",), prompt_and_answer="messages"),
    "alpaca": Format(("instruction", "output"), optional=("input",), convert="alpaca_to_messages",
                     becomes="messages", prompt_and_answer="messages"),
}

_SFT = Task(
    name="sft",
    trainer_class="trl.SFTTrainer",
    config_class="trl.SFTConfig",
    model_class="transformers.AutoModelForCausalLM",
    peft_task_type="CAUSAL_LM",
    formats=MappingProxyType(_CHAT),
    builder="runner.train.trainer.lm_trainer_kwargs",
    default_metrics=LM_METRICS,
    metrics=LM_METRICS + GENERATIVE,
    format_only_options=MappingProxyType({
        "completion_only_loss": "prompt_completion",
        "assistant_only_loss": "messages",
    }),
    # the runner masks assistant turns itself (runner.data.chat_masks): TRL's masking needs {% generation %} markers
    runner_keys=("assistant_only_loss",),
)

TASKS: Mapping[str, Task] = MappingProxyType({
    "sft": _SFT,
    # Continued pre-training / from scratch: the same trainer on raw text, loss on every token.
    "pretrain": replace(_SFT, name="pretrain", formats=MappingProxyType({"text": _CHAT["text"]}), metrics=LM_METRICS),
    "dpo": Task(
        name="dpo",
        trainer_class="trl.DPOTrainer",
        config_class="trl.DPOConfig",
        model_class="transformers.AutoModelForCausalLM",
        peft_task_type="CAUSAL_LM",
        formats=MappingProxyType({"preference": Format(("chosen", "rejected"), optional=("prompt",),
                                                       prompt_and_answer="preference")}),
        builder="runner.train.trainer.lm_trainer_kwargs",
        default_metrics=("loss", "rewards"),
        metrics=("loss", "rewards") + GENERATIVE,  # generated answers compared with the chosen responses
        causal_lm=False,  # the DPO loss is not a token loss: no perplexity, no retention set
        needs_reference=True,
    ),
    "classification": Task(
        name="classification",
        trainer_class="transformers.Trainer",
        config_class="transformers.TrainingArguments",
        model_class="transformers.AutoModelForSequenceClassification",
        peft_task_type="SEQ_CLS",
        formats=MappingProxyType({"labelled": Format(("text", "label"), optional=("text_pair",))}),
        builder="runner.train.classification.classification_trainer_kwargs",
        default_metrics=("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix"),
        metrics=("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix"),
        runner_keys=("max_length", "class_weights"),
        causal_lm=False,
        prepare_data="runner.train.classification.encode_labels",
        eval_features="runner.train.classification.eval_features",
        predict="runner.commands.inference.classify_texts",
        head_module="score",
        fresh_head=True,
        label_predictions="runner.train.classification.predicted_ids",
        uses_chat_template=False,
    ),
})


def trained_format(task: Task, fmt: str) -> str:
    """The format of the rows the trainer receives (alpaca records arrive as messages)."""
    return task.formats[fmt].becomes or fmt


def data_format(task: Task, name: str | None) -> str:
    """The recipe's format, or the task's default (its first) when the recipe leaves it null."""
    return name if name is not None else next(iter(task.formats))


def import_dotted(name: str):
    """'trl.SFTTrainer' -> the class. Only called once a run really needs the class."""
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)
