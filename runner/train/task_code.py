"""The code of each task in the task table (runner/plan/tasks.py): its trainer, config and model classes and its
trainer's arguments. Classes are returned by functions so that importing this table imports no library."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from runner.train import classification
from runner.train.trainer_kwargs import distill_trainer_kwargs, lm_trainer_kwargs, rl_trainer_kwargs


def _sft_trainer():
    from trl import SFTTrainer

    return SFTTrainer


def _sft_config():
    from trl import SFTConfig

    return SFTConfig


def _dpo_trainer():
    from trl import DPOTrainer

    return DPOTrainer


def _dpo_config():
    from trl import DPOConfig

    return DPOConfig


def _grpo_trainer():
    from trl import GRPOTrainer

    return GRPOTrainer


def _grpo_config():
    from trl import GRPOConfig

    return GRPOConfig


def _rloo_trainer():
    from trl import RLOOTrainer

    return RLOOTrainer


def _rloo_config():
    from trl import RLOOConfig

    return RLOOConfig


def _reward_trainer():
    from trl import RewardTrainer

    return RewardTrainer


def _reward_config():
    from trl import RewardConfig

    return RewardConfig


def _kto_trainer():
    from trl import KTOTrainer

    return KTOTrainer


def _kto_config():
    from trl import KTOConfig

    return KTOConfig


def _distillation_trainer():
    from trl import DistillationTrainer

    return DistillationTrainer


def _distillation_config():
    from trl import DistillationConfig

    return DistillationConfig


def _trainer():
    from transformers import Trainer

    return Trainer


def _training_arguments():
    from transformers import TrainingArguments

    return TrainingArguments


def _causal_lm():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _sequence_classification():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


@dataclass(frozen=True)
class TaskCode:
    trainer_class: Callable[[], type]
    config_class: Callable[[], type]  # receives the recipe's `training` section (less runner keys) as kwargs
    model_class: Callable[[], type]  # the Auto class that loads or builds the model
    trainer_kwargs: Callable  # (plan, model, tokenizer, splits) -> the trainer's keyword arguments but `args`


_SFT = TaskCode(_sft_trainer, _sft_config, _causal_lm, lm_trainer_kwargs)

TASK_CODE = {
    "sft": _SFT,
    "pretrain": _SFT,
    "dpo": TaskCode(_dpo_trainer, _dpo_config, _causal_lm, lm_trainer_kwargs),
    "kto": TaskCode(_kto_trainer, _kto_config, _causal_lm, lm_trainer_kwargs),
    "distill": TaskCode(_distillation_trainer, _distillation_config, _causal_lm, distill_trainer_kwargs),
    "grpo": TaskCode(_grpo_trainer, _grpo_config, _causal_lm, rl_trainer_kwargs),
    "rloo": TaskCode(_rloo_trainer, _rloo_config, _causal_lm, rl_trainer_kwargs),
    "classification": TaskCode(_trainer, _training_arguments, _sequence_classification,
                               classification.classification_trainer_kwargs),
    # TRL tokenizes the pairs and wraps the adapter itself, as for DPO (no reference: the plan says none)
    "reward": TaskCode(_reward_trainer, _reward_config, _sequence_classification, lm_trainer_kwargs),
}
