"""Measure a trained (or not yet trained) model: the plan's metrics, offline, before and after training.

Losses come from the trainer's own evaluation loop; generated answers from `generate` (greedy by
default); classification metrics from the trainer's predictions. Metric arithmetic lives in
`metrics.py`.
"""
from __future__ import annotations

from runner.evaluate import metrics as m
from runner.plan.tasks import GENERATIVE, LABEL_METRICS, PAIR_METRICS, TASKS, trained_format
from runner.evaluate.generation import PROMPT_AND_ANSWER, generate_across_ranks
from runner.train import classification
from runner.train import reward


def measure(trainer, plan: dict, splits) -> dict:
    """The plan's metrics on the evaluation data, plus retention loss when configured."""
    wanted = plan["evaluation"]["metrics"]
    results: dict = {}
    if splits.evaluation is not None and wanted:
        features = eval_features(trainer, plan, splits)
        results.update(loss_metrics(trainer.evaluate(eval_dataset=features), wanted))
        if any(name in LABEL_METRICS for name in wanted):
            results.update(label_metrics(trainer, plan, splits.evaluation, wanted))
        if any(name in PAIR_METRICS for name in wanted):
            results.update(pair_metrics(trainer, plan, splits.evaluation, wanted))
        generative = [name for name in wanted if name in GENERATIVE]
        if generative:
            predictions, references = generated_answers(trainer, plan, splits.evaluation, splits.references)
            results.update(m.generation_metrics(generative, predictions, references))
    return results


def measure_at_train_start(trainer, plan: dict, splits, results: dict, early: dict):
    """A callback taking the before-training measurements at the start of train(), inside the engine."""
    from runner.train.callbacks import AtTrainStart

    def before():
        results["before"] = measure(trainer, plan, splits) if plan["evaluation"]["baseline"] else None
        early.update(retention=measure_retention(trainer, splits), in_train=True)

    return AtTrainStart(before)


def measure_retention(trainer, splits) -> dict | None:
    if splits.retention is None:
        return None
    loss = trainer.evaluate(eval_dataset=splits.retention, metric_key_prefix="retention")["retention_loss"]
    return {"loss": loss, "perplexity": m.perplexity(loss)}


def eval_features(trainer, plan: dict, splits):
    """What trainer.evaluate gets: None reuses the trainer's own eval set; TRL prepares raw rows itself."""
    if splits.evaluation is splits.eval:
        return None
    featurize = EVAL_FEATURES.get(plan["task"])
    return featurize(trainer, plan, splits.evaluation) if featurize else splits.evaluation


def loss_metrics(evaluated: dict, wanted: list[str]) -> dict:
    out = {}
    if "loss" in wanted or "perplexity" in wanted:
        out["loss"] = evaluated["eval_loss"]
    if "perplexity" in wanted:
        out["perplexity"] = m.perplexity(evaluated["eval_loss"])
    if "rewards" in wanted:  # TRL's DPO logs eval_rewards/chosen, /rejected, /accuracies, /margins
        out.update({k.removeprefix("eval_"): v for k, v in evaluated.items() if k.startswith("eval_rewards/")})
    return out


def label_metrics(trainer, plan: dict, dataset, wanted: list[str]) -> dict:
    predictions, references = LABEL_PREDICTIONS[plan["task"]](trainer, dataset, plan)
    names = [trainer.model.config.id2label[i] for i in range(trainer.model.config.num_labels)]
    found = m.classification_metrics(predictions, references, names)
    out = {name: found[name] for name in wanted if name in m.CLASSIFICATION_METRICS}
    if "confusion_matrix" in wanted:
        out["confusion_matrix"] = found["confusion_matrix"]
        out["per_class"] = found["per_class"]
    return out


def pair_metrics(trainer, plan: dict, dataset, wanted: list[str]) -> dict:
    """Pairwise accuracy and mean margin of the model's scores on the evaluation pairs, and how many were scored."""
    chosen, rejected = PAIR_SCORES[plan["task"]](trainer, dataset, plan)
    found = m.pairwise_metrics(chosen, rejected)
    return {**{name: found[name] for name in wanted if name in PAIR_METRICS}, "pairs": found["pairs"]}


def generated_answers(trainer, plan: dict, dataset, references: list | None = None) -> tuple[list[str], list]:
    """Greedy (or configured) answers to the first `max_examples` prompts, and their references: the format's one
    answer per row, or every answer `references` holds for it (evaluation.references, in the rows' order)."""
    limit = plan["evaluation"]["max_examples"]
    rows = dataset.select(range(min(limit or len(dataset), len(dataset))))
    tokenizer = trainer.processing_class
    prompt_and_answer = PROMPT_AND_ANSWER[trained_format(TASKS[plan["task"]], plan["data"]["format"])]
    pairs = [(i, prompt_and_answer(row, tokenizer)) for i, row in enumerate(rows)]
    pairs = [(i, pair) for i, pair in pairs if pair is not None]
    prompts = [prompt for _, (prompt, _) in pairs]
    references = [references[i] if references is not None else answer for i, (_, answer) in pairs]
    return generate_across_ranks(trainer.model, tokenizer, prompts, plan["evaluation"]["generation"]), references


# Task -> what trainer.evaluate takes for canonical evaluation rows; absent: the rows (TRL prepares them itself).
EVAL_FEATURES = {"classification": classification.eval_features}
# Task -> function(trainer, dataset, plan) -> (predicted label ids, reference ids): every task that predicts labels.
LABEL_PREDICTIONS = {"classification": classification.predicted_ids}
# Task -> function(trainer, dataset, plan) -> (chosen scores, rejected scores): every task that scores pairs.
PAIR_SCORES = {"reward": reward.pair_scores}


