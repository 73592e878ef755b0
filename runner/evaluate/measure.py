"""Measure a trained (or not yet trained) model: the plan's metrics, offline, before and after training.

Losses come from the trainer's own evaluation loop; generated answers from `generate` (greedy by
default); classification metrics from the trainer's predictions. Metric arithmetic lives in
`metrics.py`.
"""
from __future__ import annotations

from dataclasses import replace

from runner.evaluate import metrics as m
from runner.plan.tasks import GENERATIVE, LABEL_METRICS, PAIR_METRICS, TASKS, trained_format
from runner.evaluate.generation import PROMPT_AND_ANSWER, generate_across_ranks
from runner.train import classification
from runner.train import reward


def measure(trainer, plan: dict, splits) -> dict:
    """The plan's metrics on the evaluation data; with a list of evaluation sources, on each one too (`sources`),
    the whole set's generative metrics then scored on the answers generated for each (max_examples per source)."""
    if splits.eval_ranges is None or splits.evaluation is not splits.eval:
        return measure_rows(trainer, plan, splits)[0]
    per_source, predictions, references = {}, [], []
    for name, (first, end) in splits.eval_ranges.items():
        rows = replace(splits, evaluation=splits.eval.select(range(first, end)), references=None)
        per_source[name], (said, meant) = measure_rows(trainer, plan, rows, prefix=f"eval_{name}")
        predictions, references = predictions + said, references + meant
    results = measure_rows(trainer, plan, splits, generated=(predictions, references))[0]
    return {**results, "sources": per_source} if results else results


def measure_rows(trainer, plan: dict, splits, prefix: str = "eval", generated: tuple | None = None) -> tuple:
    """(the plan's metrics on splits.evaluation, (generated answers, their references)). `prefix`: the trainer's
    metric_key_prefix (a source's own keeps the run's eval_loss history the whole set's); `generated`: answers
    already generated for these rows."""
    wanted = plan["evaluation"]["metrics"]
    results: dict = {}
    predictions, references = generated or ([], [])
    if splits.evaluation is not None and wanted:
        features = eval_features(trainer, plan, splits)
        results.update(loss_metrics(trainer.evaluate(eval_dataset=features, metric_key_prefix=prefix), wanted, prefix))
        if any(name in LABEL_METRICS for name in wanted):
            results.update(label_metrics(trainer, plan, splits.evaluation, wanted))
        if any(name in PAIR_METRICS for name in wanted):
            results.update(pair_metrics(trainer, plan, splits.evaluation, wanted))
        generative = [name for name in wanted if name in GENERATIVE]
        if generative:
            if generated is None:
                predictions, references = generated_answers(trainer, plan, splits.evaluation, splits.references)
            results.update(m.generation_metrics(generative, predictions, references))
    return results, (predictions, references)


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


def loss_metrics(evaluated: dict, wanted: list[str], prefix: str = "eval") -> dict:
    out = {}
    if "loss" in wanted or "perplexity" in wanted:
        out["loss"] = evaluated[f"{prefix}_loss"]
    if "perplexity" in wanted:
        out["perplexity"] = m.perplexity(evaluated[f"{prefix}_loss"])
    if "rewards" in wanted:  # TRL's DPO adds eval_rewards/chosen, /rejected, /accuracies, /margins (whatever the
        # prefix); GRPO and RLOO eval_reward (the weighted sum) and eval_rewards/<name>/mean and /std
        out.update({k.removeprefix("eval_"): v for k, v in evaluated.items()
                    if k.startswith("eval_rewards/") or k in ("eval_reward", "eval_reward_std")})
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


