"""Sequence classification: tokenization, the weighted loss, the Trainer's arguments, predicted label ids.

The classification task's code rows (runner/train/task_code.py, runner/evaluate/measure.py); its label map is
made with the data (runner/data/labels.py).
"""
from __future__ import annotations

from runner.data import tokencache

def tokenize(dataset, tokenizer, max_length: int):
    def encode_batch(batch):
        pair = batch["text_pair"] if "text_pair" in batch else None
        return tokenizer(batch["text"], pair, truncation=True, max_length=max_length)

    text_columns = [c for c in ("text", "text_pair") if c in dataset.column_names]
    return dataset.map(encode_batch, batched=True, remove_columns=text_columns, desc="tokenizing")


def weighted_loss(weights: list[float]):
    """compute_loss_func for transformers.Trainer: cross-entropy with per-class weights."""
    import torch

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        weight = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), weight=weight)

    return loss


def classification_trainer_kwargs(plan: dict, model, tokenizer, splits) -> dict:
    from transformers import DataCollatorWithPadding

    from runner.train.adapters import wrap_for_classification

    settings = plan["trainer"]["runner_settings"]
    if model.config.pad_token_id is None:  # decoder models find the last real token by it
        model.config.pad_token_id = tokenizer.pad_token_id
    weights = settings["class_weights"]  # resolved by encode_labels from the training labels
    cache = tokencache.for_run(plan, splits, tokenizer, {"max_length": settings["max_length"]})
    tokenized = {k: tokenized_features(getattr(splits, k), tokenizer, settings["max_length"], cache)
                 for k in ("train", "eval") if getattr(splits, k) is not None}
    return {
        "model": wrap_for_classification(model, plan["peft"]),
        "train_dataset": tokenized["train"],
        "eval_dataset": tokenized.get("eval"),
        "processing_class": tokenizer,
        "data_collator": DataCollatorWithPadding(tokenizer),
        "compute_loss_func": weighted_loss(weights) if weights else None,
        "token_cache": cache,  # not the trainer's: build_trainer keeps it on the trainer for eval_features
    }


def eval_features(trainer, plan: dict, dataset):
    return tokenized_features(dataset, trainer.processing_class, plan["trainer"]["runner_settings"]["max_length"],
                              getattr(trainer, "token_cache", None))


def tokenized_features(dataset, tokenizer, max_length: int, cache):
    """tokenize() through the run's tokenization cache (a hit skips tokenizing)."""
    return tokencache.cached(cache, dataset, lambda: tokenize(dataset, tokenizer, max_length))


def predicted_ids(trainer, dataset, plan: dict) -> tuple[list[int], list[int]]:
    """(predicted label ids, reference ids) on a canonical labelled dataset."""
    output = trainer.predict(eval_features(trainer, plan, dataset), metric_key_prefix="predict")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return logits.argmax(-1).tolist(), list(dataset["label"])
