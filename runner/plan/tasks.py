"""The task table: what each run kind is (formats, metrics, flags), and only here.

Other modules look a task up instead of branching on its name. A task's code lives with the stage that runs
it, in tables keyed by the task's name: its trainer, config and model classes and trainer arguments in
runner/train/task_code.py, its data step in runner/data/load.py (PREPARE), its evaluation features and label
predictions in runner/evaluate/measure.py, its `predict` in runner/commands/inference.py. A test checks that
every task has its row in each. This table stays pure: `plan` never imports torch, transformers or trl.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Format:
    """A data format: the canonical fields a source must provide, and what its rows become."""

    fields: tuple[str, ...]
    optional: tuple[str, ...] = ()
    # the format its rows are converted to for the trainer (runner/data/load.py CONVERTERS); None: as they are
    becomes: str | None = None
    # a prompt and a reference answer can be read from its rows (runner/evaluate/measure.py), for generative metrics
    generative: bool = False


@dataclass(frozen=True)
class Task:
    name: str
    peft_task_type: str  # peft's TaskType for adapters on this model class
    formats: Mapping[str, Format]  # the first is the default
    default_metrics: tuple[str, ...]
    metrics: tuple[str, ...]  # the ones that make sense for this task
    # training keys the runner consumes itself (not fields of the trainer's config class)
    runner_keys: tuple[str, ...] = ()
    # training key -> the only data format where setting it to true makes sense; null resolves to
    # "true for that format, false otherwise"
    format_only_options: Mapping[str, str] = field(default_factory=dict)
    # a language-model loss over the tokens a mask marks (perplexity, retention; conversations masked by
    # runner/data/chat_masks.py; examples truncated to no loss token dropped by TRL, so the data check counts them)
    causal_lm: bool = True
    needs_reference: bool = False  # the loss compares with a frozen reference model (DPO)
    head_module: str = "lm_head"  # the output layer's name (a LoRA target beyond the transformer blocks)
    fresh_head: bool = False  # a checkpoint's own head of another shape is replaced by a new one
    # an adapter on the output layer trains (TRL's SFTTrainer computes its loss from lm_head.weight directly: no)
    adapter_on_head_trains: bool = True
    predicts_labels: bool = False  # the model outputs a class per text (label metrics), not text
    liger_kernel: bool = False  # Liger's fused kernels apply to its loss (TRL's SFTTrainer): a launch decision
    # the model scores each text with one number and is measured on held-out pairs (pairwise accuracy, margin)
    scores_pairs: bool = False
    # model config values the task fixes whatever the checkpoint says (a reward model's single output)
    model_config: Mapping[str, object] = field(default_factory=dict)
    # examples longer than max_length are left out by the trainer instead of cut (TRL's RewardTrainer filters
    # pairs where either side is too long): the data check says "dropped", not "truncated"
    drops_long_examples: bool = False
    # how the memory estimate counts rows and heads (KINDS in runner/plan/activations.py): "sft" (one row per example, a
    # language-model head), "dpo" (chosen and rejected rows, a reference), "classification" (a classification head),
    # "reward" (chosen and rejected rows, a one-output head)
    memory_kind: str = "sft"
    uses_chat_template: bool = True  # chat formats render through the tokenizer's (or the recipe's) template
    # why its training data cannot stream (None: it can): a step that needs the whole data, or indices into it
    cannot_stream: str | None = None
    # trained online from generated completions, scored by the recipe's `rewards` (required, and refused elsewhere)
    rewarded: bool = False


GENERATIVE = ("exact_match", "rouge", "bleu")
LM_METRICS = ("loss", "perplexity")
LABEL_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix")
# share of held-out pairs whose chosen side scores higher than the rejected one; mean score(chosen) - score(rejected)
PAIR_METRICS = ("pairwise_accuracy", "mean_margin")

_CHAT = {
    "text": Format(("text",)),
    "prompt_completion": Format(("prompt", "completion"), generative=True),
    # OpenAI's chat shape, tool calls and a per-row `tools` list included; converted to itself: the calls' arguments
    # as objects, `tools` as a JSON string (runner/data/tool_calls.py)
    "messages": Format(("messages",), optional=("tools",), becomes="messages", generative=True),
    "alpaca": Format(("instruction", "output"), optional=("input",), becomes="messages", generative=True),
    # LLaMA-Factory's and axolotl's shape: conversations of {"from": human/gpt/system/function_call/observation,
    # "value"}, LLaMA-Factory's `tools` (runner/data/sharegpt.py)
    "sharegpt": Format(("conversations",), optional=("system", "tools"), becomes="messages", generative=True),
}

_PREFERENCE = {
    "preference": Format(("chosen", "rejected"), optional=("prompt",), generative=True),
    # conversations ending with the request, chosen and rejected as gpt turns (LLaMA-Factory's dpo_en_demo)
    "sharegpt_preference": Format(("conversations", "chosen", "rejected"), optional=("system",),
                                  becomes="preference", generative=True),
}

_SFT = Task(
    name="sft",
    peft_task_type="CAUSAL_LM",
    formats=MappingProxyType(_CHAT),
    default_metrics=LM_METRICS,
    metrics=LM_METRICS + GENERATIVE,
    format_only_options=MappingProxyType({
        "completion_only_loss": "prompt_completion",
        "assistant_only_loss": "messages",
    }),
    # the runner masks assistant turns itself (runner/data/chat_masks.py): TRL's masking needs {% generation %}
    runner_keys=("assistant_only_loss",),
    adapter_on_head_trains=False,
    liger_kernel=True,
)

TASKS: Mapping[str, Task] = MappingProxyType({
    "sft": _SFT,
    # Continued pre-training / from scratch: the same trainer on raw text, loss on every token.
    "pretrain": replace(_SFT, name="pretrain", formats=MappingProxyType({"text": _CHAT["text"]}), metrics=LM_METRICS),
    "dpo": Task(
        name="dpo",
        peft_task_type="CAUSAL_LM",
        formats=MappingProxyType(_PREFERENCE),
        default_metrics=("loss", "rewards"),
        metrics=("loss", "rewards") + GENERATIVE,  # generated answers compared with the chosen responses
        causal_lm=False,  # the DPO loss is not a token loss: no perplexity, no retention set
        needs_reference=True,
        memory_kind="dpo",
    ),
    # KTO: each example one completion marked desirable or not (no pairs); a frozen reference, as for DPO
    "kto": Task(
        name="kto",
        peft_task_type="CAUSAL_LM",
        formats=MappingProxyType({"unpaired_preference": Format(("prompt", "completion", "label"))}),
        default_metrics=("loss", "rewards"),
        metrics=("loss", "rewards"),  # TRL's eval rewards/chosen and rewards/rejected (desirable, undesirable)
        causal_lm=False,
        needs_reference=True,
        memory_kind="dpo",  # a completion and the KL completion per example, and a reference
    ),
    "classification": Task(
        name="classification",
        peft_task_type="SEQ_CLS",
        formats=MappingProxyType({"labelled": Format(("text", "label"), optional=("text_pair",))}),
        default_metrics=("loss",) + LABEL_METRICS,
        metrics=("loss",) + LABEL_METRICS,
        runner_keys=("max_length", "class_weights"),
        causal_lm=False,
        head_module="score",
        fresh_head=True,
        predicts_labels=True,
        uses_chat_template=False,
        cannot_stream="it reads the label set and class weights from the whole training data first",
        memory_kind="classification",
    ),
    # A reward model: the Bradley-Terry loss -log sigmoid(score(chosen) - score(rejected)) on the DPO data formats,
    # TRL's RewardTrainer over a sequence-classification model with one output (the score at the last real token).
    "reward": Task(
        name="reward",
        peft_task_type="SEQ_CLS",  # peft then trains and saves the score head beside the adapter (modules_to_save)
        formats=MappingProxyType(_PREFERENCE),
        default_metrics=("loss",) + PAIR_METRICS,
        metrics=("loss",) + PAIR_METRICS,  # a score, not text: nothing generated to compare
        causal_lm=False,
        head_module="score",
        fresh_head=True,  # a checkpoint's head of another shape (an LM head, two labels) is replaced
        scores_pairs=True,
        model_config=MappingProxyType({"num_labels": 1}),
        drops_long_examples=True,
        memory_kind="reward",
    ),
})


_ONLINE_RL = Task(
    name="grpo",
    peft_task_type="CAUSAL_LM",
    # prompts, and a reference answer the rewards may compare completions with (TRL's prompt-only datasets)
    formats=MappingProxyType({"prompt_only": Format(("prompt",), optional=("answer",), generative=True)}),
    default_metrics=("rewards",),
    metrics=("rewards",) + GENERATIVE,  # the mean reward of generated completions, per reward, before and after
    causal_lm=False,  # the policy loss is not a token loss over the data: no perplexity, no retention set
    cannot_stream="TRL's sampler repeats each prompt num_generations times by its index",
    rewarded=True,
    memory_kind="online_rl",
)
_DISTILL = Task(
    name="distill",
    peft_task_type="CAUSAL_LM",
    formats=_ONLINE_RL.formats,  # prompts the student completes; the teacher scores every token of them
    default_metrics=("loss",),
    metrics=("loss",),  # the divergence between student and teacher on held-out prompts
    causal_lm=False,
    cannot_stream=_ONLINE_RL.cannot_stream,
    memory_kind="dpo",  # the student's rows and a second (teacher) model
)
TASKS = MappingProxyType({**TASKS,
                          "distill": _DISTILL,
                          # online RL: completions generated, scored by the rewards, the policy pushed towards the
                          # better ones within each prompt's group (GRPO) or against the others' mean (RLOO)
                          "grpo": _ONLINE_RL,
                          "rloo": replace(_ONLINE_RL, name="rloo")})


def trained_format(task: Task, fmt: str) -> str:
    """The format of the rows the trainer receives (alpaca records arrive as messages)."""
    return task.formats[fmt].becomes or fmt


def data_format(task: Task, name: str | None) -> str:
    """The recipe's format, or the task's default (its first) when the recipe leaves it null."""
    return name if name is not None else next(iter(task.formats))
