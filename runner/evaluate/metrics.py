"""Evaluation metrics, offline and pure.

    classification_metrics([0, 2, 1], [0, 1, 1], ["neg", "neu", "pos"])
    pairwise_metrics(chosen_scores, rejected_scores)
    generation_metrics(["rouge", "bleu"], predictions, references)

We do not use `evaluate.load(...)`: it fetches metric scripts from the Hub. ROUGE and BLEU call
rouge_score and sacrebleu directly. BLEU uses sacrebleu's defaults (corpus BLEU, 13a tokenizer),
as Hugging Face's `sacrebleu` metric does. ROUGE is the mean F-measure over pairs with the Porter
stemmer on; Hugging Face's `rouge` metric defaults to no stemming and reports a bootstrap
aggregate, so its numbers can differ. Those imports live inside the functions so that
`import runner.evaluate.metrics` stays cheap for `validate` and `plan`.
"""
from __future__ import annotations

import math
import re

from runner.plan.tasks import GENERATIVE, LABEL_METRICS

GENERATION_METRICS = GENERATIVE
CLASSIFICATION_METRICS = tuple(name for name in LABEL_METRICS if name != "confusion_matrix")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_pairs(predictions: list, references: list) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def confusion_matrix(predictions: list[int], references: list[int], n_classes: int) -> list[list[int]]:
    """matrix[i][j] = number of examples whose reference is i and prediction is j."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for pred, ref in zip(predictions, references):
        for value in (pred, ref):
            # bool is an int, and a negative index would silently count into the wrong row
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_classes:
                raise ValueError(f"label id {value!r} is outside 0..{n_classes - 1}")
        matrix[ref][pred] += 1
    return matrix


def _ratio(num: int | float, den: int | float) -> float:
    # scikit-learn's zero_division=0: an empty denominator scores 0, not NaN
    return num / den if den else 0.0


def _class_scores(matrix: list[list[int]], k: int) -> dict:
    true_pos = matrix[k][k]
    predicted = sum(row[k] for row in matrix)  # column k
    support = sum(matrix[k])  # row k
    precision, recall = _ratio(true_pos, predicted), _ratio(true_pos, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_metrics(predictions: list[int], references: list[int], labels: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1 over every class in `labels`, per-class scores and the confusion matrix.

    Macro averages include classes absent from both lists (they score 0), as scikit-learn does
    when given `labels=range(len(labels))`, so the number does not depend on which classes a
    small evaluation split happens to contain.
    """
    _check_pairs(predictions, references)
    matrix = confusion_matrix(predictions, references, len(labels))
    scores = [_class_scores(matrix, k) for k in range(len(labels))]
    correct = sum(matrix[k][k] for k in range(len(labels)))
    return {
        "accuracy": correct / len(references),
        "precision_macro": sum(s["precision"] for s in scores) / len(labels),
        "recall_macro": sum(s["recall"] for s in scores) / len(labels),
        "f1_macro": sum(s["f1"] for s in scores) / len(labels),
        "per_class": dict(zip(labels, scores)),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix},
    }


def pairwise_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """For a reward model's scores of held-out pairs: the share where chosen scores strictly higher (a tie counts
    as wrong, so an untrained constant scorer gets 0, not 1), the mean of score(chosen) - score(rejected), and the
    number of pairs scored."""
    _check_pairs(chosen, rejected)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"pairwise_accuracy": sum(d > 0 for d in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins), "pairs": len(margins)}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


def reference_lists(references: list) -> list[list[str]]:
    """Each reference as the list of answers it accepts: a string is one; a list (SciTLDR's several TLDRs per paper)
    is all of them."""
    lists = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in lists):
        raise ValueError("a prediction has an empty list of references")
    return lists


def exact_match(predictions: list[str], references: list) -> float:
    """Share of predictions equal to one of their references after stripping and collapsing whitespace runs.

    Case-sensitive on purpose: for generation targets such as code, labels or names, "True" and
    "true" are different answers. Punctuation is kept for the same reason.
    """
    _check_pairs(predictions, references)
    hits = sum(any(_normalise(p) == _normalise(r) for r in refs)
               for p, refs in zip(predictions, reference_lists(references)))
    return hits / len(predictions)


def rouge(predictions: list[str], references: list) -> dict:
    """Mean ROUGE-1/2/L F-measure over predictions, with the Porter stemmer (so "cats" matches "cat"); against
    several references, the best one per ROUGE type (rouge_score's score_multi, as SciTLDR's authors score)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, reference_lists(references)):
        scores = scorer.score_multi(refs, pred)  # (targets, prediction); one target: score(target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def bleu(predictions: list[str], references: list) -> float:
    """Corpus BLEU on a 0-100 scale with sacrebleu's defaults (13a tokenizer, exp smoothing), against every
    reference of each prediction."""
    import sacrebleu

    _check_pairs(predictions, references)
    lists = reference_lists(references)
    # sacrebleu takes reference streams (the i-th reference of every prediction); None where one has fewer
    streams = [[refs[i] if i < len(refs) else None for refs in lists] for i in range(max(map(len, lists)))]
    return float(sacrebleu.corpus_bleu(predictions, streams).score)


def perplexity(mean_loss: float) -> float:
    """exp of a mean token cross-entropy in nats; inf when it overflows a float."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return float("inf")


def generation_metrics(names: list[str], predictions: list[str], references: list[str]) -> dict:
    """Run the named metrics and merge them into one flat dict of floats."""
    unknown = [n for n in names if n not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown generation metric(s) {unknown}; choose from {list(GENERATION_METRICS)}")
    results: dict[str, float] = {}
    for name in names:
        if name == "exact_match":
            results["exact_match"] = exact_match(predictions, references)
        elif name == "rouge":
            results.update(rouge(predictions, references))
        else:
            results["bleu"] = bleu(predictions, references)
    return results
