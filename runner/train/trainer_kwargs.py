"""The keyword arguments TRL's trainers that tokenize their own data (SFT, DPO, reward) take beside `args`."""
from __future__ import annotations

from runner.train import adapters


def lm_trainer_kwargs(plan: dict, model, tokenizer, splits) -> dict:
    """TRL's trainers (SFT, DPO, reward) tokenize the data themselves and wrap the model with peft_config.

    For DPO with an adapter, TRL uses the base with the adapter disabled as the reference model
    (no second copy); with full fine-tuning it copies the model, or precomputes the reference
    log-probabilities with `precompute_ref_log_probs`.
    """
    kwargs = {}
    if plan["trainer"]["reference_model"] == "copy":
        # TRL would reload the reference from model.name_or_path, which has no weights for a random
        # model and ignores config_overrides: a copy of the start model is the true reference.
        import copy

        kwargs["ref_model"] = copy.deepcopy(model).eval().requires_grad_(False)
    elif plan["trainer"]["reference_model"] == "initial":  # evaluating a trained model: reload the start model
        from runner.train.models import load_model

        start = load_model(plan["model"], plan["recipe"]["training"]["seed"])
        kwargs["ref_model"] = start.eval().requires_grad_(False)
    return {
        "model": adapters.prepare_model(model, plan["peft"]),
        "train_dataset": splits.train,
        "eval_dataset": splits.eval,
        "processing_class": tokenizer,
        "peft_config": adapters.peft_config(plan["peft"]),
        **kwargs,
    }


def rl_trainer_kwargs(plan: dict, model, tokenizer, splits) -> dict:
    """TRL's online RL trainers (GRPO, RLOO): the policy, the rewards (functions; a reward model scores through
    one, runner/train/rewards.py model_scorer), prompts to generate from. With beta > 0 and an adapter, the base with the adapter off is the
    reference (TRL's own choice); the plan refused the cases where TRL would reload the wrong one."""
    from runner.train.rewards import reward_functions

    return {
        "model": adapters.prepare_model(model, plan["peft"]),
        "reward_funcs": reward_functions(plan["rewards"]),
        "train_dataset": splits.train,
        "eval_dataset": splits.eval,
        "processing_class": tokenizer,
        "peft_config": adapters.peft_config(plan["peft"]),
    }


def distill_trainer_kwargs(plan: dict, model, tokenizer, splits) -> dict:
    """TRL's DistillationTrainer: the student as for SFT, and the teacher it learns from, loaded here (a model that
    cannot load is the recipe's to fix, at its key)."""
    from transformers import AutoModelForCausalLM

    from runner.train.models import hub_call

    config = plan["trainer"]["config"]
    teacher = hub_call("/training/teacher_model_name_or_path", config["teacher_model_name_or_path"],
                       AutoModelForCausalLM.from_pretrained, config["teacher_model_name_or_path"],
                       revision=config["teacher_model_revision"])
    return {**lm_trainer_kwargs(plan, model, tokenizer, splits), "teacher_model": teacher.eval()}
