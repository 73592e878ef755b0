"""Sequence classification: label maps, tokenization, class weights, the Trainer's extra arguments.

Named by the task table (`prepare_data`, `builder`); nothing else in the runner knows about labels.
"""
from __future__ import annotations

from dataclasses import replace

from runner.data import tokencache
from runner.errors import Problem, RecipeError

SHOWN_ROWS = 10  # rows named in a label problem; the count covers all of them


def encode_labels(plan: dict, splits):
    """(splits with integer `label` columns, {"config": the label map, "settings": resolved class weights})."""
    names = plan["data"]["labels"] or infer_label_names(splits.train["label"])
    encoded = {}
    for attr, where in (("train", "/data/train"), ("eval", "/data/eval"), ("evaluation", "/evaluation/data")):
        dataset = getattr(splits, attr)
        if dataset is not None:
            encoded[attr] = encode(dataset, names, where)
    config = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {name: i for i, name in enumerate(names)}}
    weights = class_weights(plan["trainer"]["runner_settings"]["class_weights"], encoded["train"]["label"], len(names))
    return replace(splits, **encoded), {"config": config, "settings": {"class_weights": weights}}


def infer_label_names(values) -> list[str]:
    """Sorted distinct names, or "0".."max" for integer labels (of the whole training file)."""
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
    elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        names = [str(i) for i in range(max(values) + 1)]
    else:
        raise RecipeError([Problem("/data/train", "labels must be all names (strings) or all integers >= 0",
                                   "fix the label column, or list the names in data.labels")])
    if len(names) < 2:
        raise RecipeError([Problem("/data/train", f"only one label ({names[0]!r}) in the training data",
                                   "classification needs at least two classes")])
    return names


def encode(dataset, names: list[str], where: str):
    ids = {name: i for i, name in enumerate(names)}

    def label_id(value):
        if isinstance(value, str):
            return ids.get(value, -1)
        return value if isinstance(value, int) and 0 <= value < len(names) else -1

    encoded = [label_id(v) for v in dataset["label"]]
    bad = [row for row, label in enumerate(encoded, start=1) if label < 0]
    if bad:
        shown = ", ".join(str(r) for r in bad[:SHOWN_ROWS]) + (", ..." if len(bad) > SHOWN_ROWS else "")
        raise RecipeError([Problem(where, f"{len(bad)} rows have a label outside the label set {names}: "
                                          f"rows {shown} (column label)",
                                   "fix those rows, or list every label in data.labels")])
    return dataset.remove_columns("label").add_column("label", encoded)


def class_weights(setting, train_labels: list[int], num_labels: int) -> list[float] | None:
    if setting is None:
        return None
    if setting == "balanced":  # n / (k x count): scikit-learn's rule
        counts = [train_labels.count(i) for i in range(num_labels)]
        return [len(train_labels) / (num_labels * c) if c else 0.0 for c in counts]
    if len(setting) != num_labels:
        raise RecipeError([Problem("/training/class_weights", f"has {len(setting)} weights for {num_labels} labels",
                                   "give one weight per label, in label-id order")])
    return list(setting)


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
    tokencache.for_run(plan, splits, tokenizer, {"max_length": settings["max_length"]})
    tokenized = {k: tokenized_features(getattr(splits, k), tokenizer, settings["max_length"])
                 for k in ("train", "eval") if getattr(splits, k) is not None}
    return {
        "model": wrap_for_classification(model, plan["peft"]),
        "train_dataset": tokenized["train"],
        "eval_dataset": tokenized.get("eval"),
        "processing_class": tokenizer,
        "data_collator": DataCollatorWithPadding(tokenizer),
        "compute_loss_func": weighted_loss(weights) if weights else None,
    }


def eval_features(trainer, plan: dict, dataset):
    return tokenized_features(dataset, trainer.processing_class, plan["trainer"]["runner_settings"]["max_length"])


def tokenized_features(dataset, tokenizer, max_length: int):
    """tokenize() through the run's tokenization cache (a hit skips tokenizing)."""
    return tokencache.cached(dataset, lambda: tokenize(dataset, tokenizer, max_length))


def predicted_ids(trainer, dataset, plan: dict) -> tuple[list[int], list[int]]:
    """(predicted label ids, reference ids) on a canonical labelled dataset."""
    output = trainer.predict(eval_features(trainer, plan, dataset), metric_key_prefix="predict")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return logits.argmax(-1).tolist(), list(dataset["label"])
