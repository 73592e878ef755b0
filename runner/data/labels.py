"""Classification data: label names to ids (the label map the model config receives) and class weights."""
from __future__ import annotations

from dataclasses import replace

from runner.data.rows import shown_rows
from runner.errors import Problem, RecipeError



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
        shown = shown_rows(bad)
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
