"""`check-data RECIPE`: the data as the trainer will see it, with only the tokenizer loaded (never a model)."""
from __future__ import annotations

from runner.data import load as data
from runner.data.check import check_chat_template, inspect
from runner.train import models


def check_data(plan: dict) -> dict:
    splits, _ = data.load_all(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    check_chat_template(plan, splits, tokenizer)
    return inspect(plan, splits, tokenizer)
