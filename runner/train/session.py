"""The one setup sequence every command uses: the plan decided for this machine, the data, the tokenizer checked
against the data, and the task's trainer around a model.

`run` trains a model loaded from the recipe; `eval` and `quantize` measure a trained one through the same
trainer; `predict` needs no trainer. Each check sits here once, so the commands cannot drift apart.
"""
from __future__ import annotations

import copy
import dataclasses
import sys

from runner.data import load as data
from runner.data.check import check_chat_template
from runner.data.streaming import first_row
from runner.launch import decide, machine
from runner.train.trainer import build_trainer


def for_this_machine(plan: dict) -> tuple[dict, dict]:
    """(the plan with every per-machine setting decided here, the machine's facts)."""
    hardware = machine.hardware()
    return decide.resolve(plan, hardware), hardware


def load_data(plan: dict) -> tuple[dict, data.Splits, dict]:
    """(the plan with what the data resolved, the splits, what the data step derived: the model config updates)."""
    splits, derived = data.load_all(plan)
    return with_runner_settings(plan, derived["settings"]), splits, derived["config"]


def with_runner_settings(plan: dict, settings: dict) -> dict:
    """The plan with the runner's own settings the data resolved (e.g. balanced class weights as numbers)."""
    if not settings:
        return plan
    trainer = {**plan["trainer"], "runner_settings": {**plan["trainer"]["runner_settings"], **settings}}
    return {**plan, "trainer": trainer}


def check_tokenizer(plan: dict, splits, tokenizer) -> None:
    """The tokenizer can render the data (a chat template that masks assistant turns, where the loss needs it)."""
    check_chat_template(plan, splits, tokenizer)


def trainer_for(plan: dict, model, tokenizer, splits, hardware: dict):
    """The task's trainer around `model`, every setting checked by the library it goes to."""
    return build_trainer(plan, model, tokenizer, splits, hardware)


def measuring_trainer(plan: dict, run_dir, model, tokenizer, splits, hardware: dict):
    """(plan adjusted to measure a trained model, splits, trainer): no new adapter, no reference copy of the
    trained model. Trainers insist on training data: the (small) evaluation rows stand in, so the real training set
    is not tokenized for nothing (it was read only for what the data step derives, e.g. the label map)."""
    adjusted = for_trained_model(plan, run_dir)
    splits = dataclasses.replace(splits, train=splits.evaluation or splits.retention)
    check_tokenizer(adjusted, splits, tokenizer)
    return adjusted, splits, trainer_for(adjusted, model, tokenizer, splits, hardware)


def for_trained_model(plan: dict, run_dir) -> dict:
    """The plan, adjusted to evaluate an already trained model: no new adapter, outputs in its run directory."""
    adjusted = copy.deepcopy(plan)
    adjusted["peft"] = None
    adjusted["trainer"]["config"]["output_dir"] = str(run_dir)
    if adjusted["trainer"]["reference_model"] is not None:
        # The reference is the recipe's start model, reloaded: a copy of the trained model, the trained
        # adapter switched off by TRL's "ref" adapter copy, or log-probs precomputed now would all
        # measure the trained model against itself.
        adjusted["trainer"]["reference_model"] = "initial"
    return adjusted


DATA_CHECK_SAMPLE = 2000  # training rows whose token lengths are measured before each run


def data_warnings(plan: dict, splits, tokenizer, show: bool) -> list[str]:
    """Leakage and truncation found before the model loads; printed, and kept in run.json and the report."""
    from runner.data.check import inspect

    found = inspect(plan, splits, tokenizer, sample=DATA_CHECK_SAMPLE)["warnings"]
    for warning in found if show else ():
        print(f"warning: {warning}", file=sys.stderr)
    return found


def data_shape(splits: data.Splits) -> dict:
    """Whether the trainer saw chat conversations: `predict` then prompts through the chat template too."""
    from trl.data_utils import is_conversational

    return {"conversational": bool(is_conversational(first_row(splits.train)))}
