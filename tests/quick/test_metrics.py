"""Metrics against values worked out by hand in the comments, never against the libraries' own output."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from runner.evaluate import metrics
from runner.evaluate.metrics import bleu, classification_metrics, exact_match, generation_metrics, perplexity, rouge

ROOT = Path(__file__).resolve().parents[2]  # tests/quick/ -> the repository

# ---- classification -------------------------------------------------------------------------
LABELS = ["cat", "dog", "bird"]
REFS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 0, 1, 1]
# rows = reference, columns = prediction:
#            cat dog bird   support
#   cat   [   3,  1,  0 ]     4
#   dog   [   1,  1,  0 ]     2
#   bird  [   0,  2,  0 ]     2
#   predicted 4   4   0     -> bird is never predicted
# cat : P = 3/4, R = 3/4, F1 = 3/4
# dog : P = 1/4, R = 1/2, F1 = 2 * 1/8 / (3/4) = 1/3
# bird: P = 0 (no predictions, zero_division=0), R = 0/2 = 0, F1 = 0
# accuracy = (3 + 1 + 0) / 8 = 1/2
# macro P = (3/4 + 1/4 + 0) / 3 = 1/3;  macro R = (3/4 + 1/2 + 0) / 3 = 5/12
# macro F1 = (3/4 + 1/3 + 0) / 3 = 13/36


def test_confusion_matrix_by_hand():
    result = classification_metrics(PREDS, REFS, LABELS)
    assert result["confusion_matrix"] == {"labels": LABELS, "matrix": [[3, 1, 0], [1, 1, 0], [0, 2, 0]]}


@pytest.mark.parametrize("label, precision, recall, f1, support", [
    ("cat", 3 / 4, 3 / 4, 3 / 4, 4),
    ("dog", 1 / 4, 1 / 2, 1 / 3, 2),
    ("bird", 0.0, 0.0, 0.0, 2),
])
def test_per_class_by_hand(label, precision, recall, f1, support):
    scores = classification_metrics(PREDS, REFS, LABELS)["per_class"][label]
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["support"] == support


def test_accuracy_and_macro_by_hand():
    result = classification_metrics(PREDS, REFS, LABELS)
    assert result["accuracy"] == pytest.approx(1 / 2)
    assert result["precision_macro"] == pytest.approx(1 / 3)
    assert result["recall_macro"] == pytest.approx(5 / 12)
    assert result["f1_macro"] == pytest.approx(13 / 36)
    assert set(metrics.CLASSIFICATION_METRICS) <= set(result)


def test_class_without_references_scores_zero_recall_and_counts_in_macro():
    # refs [0, 1], preds [0, 2]: class 0 perfect; class 1 never predicted (P = 0, R = 0/1);
    # class 2 predicted once but never true (P = 0/1, R = 0/0 -> 0). Macro F1 = (1 + 0 + 0) / 3.
    result = classification_metrics([0, 2], [0, 1], ["a", "b", "c"])
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["f1_macro"] == pytest.approx(1 / 3)
    assert result["accuracy"] == pytest.approx(1 / 2)


def test_perfect_classification():
    result = classification_metrics([1, 0, 1], [1, 0, 1], ["no", "yes"])
    assert result["accuracy"] == result["f1_macro"] == 1.0


@pytest.mark.parametrize("preds, refs", [
    ([0, 1], [0]),         # length mismatch
    ([0, 3], [0, 1]),      # prediction id out of range
    ([0, 1], [0, -1]),     # negative id would index the last row
    ([], []),              # nothing to score
])
def test_classification_rejects_bad_input(preds, refs):
    with pytest.raises(ValueError):
        classification_metrics(preds, refs, ["a", "b", "c"])


# ---- exact match ----------------------------------------------------------------------------
def test_exact_match_normalises_whitespace_but_not_case():
    preds = ["  the  cat\tsat\n", "Paris", "a b", "x"]
    refs = ["the cat sat", "paris", "a\n\nb", "y"]
    # equal: 1st (whitespace only), 3rd (newlines collapse); not equal: 2nd (case), 4th
    assert exact_match(preds, refs) == pytest.approx(2 / 4)


def test_exact_match_rejects_mismatch():
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])


# ---- rouge ----------------------------------------------------------------------------------
def test_rouge_by_hand():
    # "the cat sat" vs "the cat ran": unigrams 2 of 3 shared -> P = R = F = 2/3;
    # bigrams {the cat, cat sat} vs {the cat, cat ran} -> 1 of 2 -> F = 1/2; LCS "the cat" = 2 -> F = 2/3
    result = rouge(["the cat sat"], ["the cat ran"])
    assert result == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3})


def test_rouge_is_mean_over_pairs_and_uses_stemmer():
    # pair 1: as above (2/3, 1/2, 2/3)
    # pair 2: "cats" stems to "cat" -> identical (1, 1, 1)
    # pair 3: "the cat" vs "the cat sat on the mat": unigrams P = 2/2, R = 2/6 -> F = 2*(1/3)/(4/3) = 1/2;
    #         bigrams P = 1/1, R = 1/5 -> F = 1/3; LCS 2 -> same as unigrams, 1/2
    # means: rouge1 = (2/3 + 1 + 1/2)/3 = 13/18; rouge2 = (1/2 + 1 + 1/3)/3 = 11/18; rougeL = 13/18
    result = rouge(["the cat sat", "the cats sat", "the cat"],
                   ["the cat ran", "the cat sat", "the cat sat on the mat"])
    assert result == pytest.approx({"rouge1": 13 / 18, "rouge2": 11 / 18, "rougeL": 13 / 18})


def test_rouge_identical_and_disjoint():
    assert rouge(["a quick brown fox"], ["a quick brown fox"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert rouge(["red green blue"], ["one two three"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_rejects_empty():
    with pytest.raises(ValueError):
        rouge([], [])


# ---- bleu -----------------------------------------------------------------------------------
def test_bleu_identical_and_disjoint():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["a b c d"], ["w x y z"]) == 0.0


def test_bleu_partial_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each -> brevity penalty 1)
    # 1-grams: "the" clipped to 1 -> 5/6;  2-grams: the cat, cat sat, sat on match -> 3/5
    # 3-grams: the cat sat, cat sat on -> 2/4;  4-grams: the cat sat on -> 1/3
    # BLEU = 100 * (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 ~ 53.73 (no zero counts, no smoothing)
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)


def test_bleu_brevity_penalty_by_hand():
    # hyp "the cat sat on" (4) vs ref of 6 tokens: every n-gram precision is 1,
    # brevity penalty = exp(1 - 6/4) = exp(-0.5) -> 60.65
    assert bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(100 * math.exp(-0.5))


def test_bleu_is_corpus_level_not_mean_of_sentences():
    # counts are pooled: the partial pair above plus an identical 6-token pair
    # 1-grams (5+6)/12, 2-grams (3+5)/10, 3-grams (2+4)/8, 4-grams (1+3)/6
    # product = 11/12 * 4/5 * 3/4 * 2/3 = 11/30 -> 100 * (11/30) ** 0.25 ~ 77.82 (mean of sentences would be ~76.86)
    score = bleu(["the cat sat on the mat", "a b c d e f"], ["the cat sat on a mat", "a b c d e f"])
    assert score == pytest.approx(100 * (11 / 30) ** 0.25)


def test_bleu_is_monotonic_in_closeness():
    ref = ["the quick brown fox jumps over the lazy dog"]
    one_word_off = bleu(["the quick brown fox jumps over the lazy cat"], ref)
    three_words_off = bleu(["the quick red fox walks over the lazy cat"], ref)
    assert (one_word_off, three_words_off) == pytest.approx((86.33400213704509, 23.356898886410015))  # 100 > . > . > 0


# ---- perplexity -----------------------------------------------------------------------------
def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(5)) == pytest.approx(5.0)
    assert perplexity(1000.0) == float("inf")  # exp(1000) overflows a double (max ~ exp(709.78))


# ---- dispatch -------------------------------------------------------------------------------
def test_generation_metrics_merges_flat():
    result = generation_metrics(list(metrics.GENERATION_METRICS), ["the cat sat"], ["the cat ran"])
    assert set(result) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    assert result["exact_match"] == 0.0
    assert result["rouge2"] == pytest.approx(1 / 2)
    assert generation_metrics(["exact_match"], ["x"], ["x"]) == {"exact_match": 1.0}


def test_generation_metrics_rejects_unknown_name():
    with pytest.raises(ValueError, match="meteor"):
        generation_metrics(["rouge", "meteor"], ["a"], ["a"])


def test_import_is_cheap():
    # `validate` and `plan` may import this module; the scoring libraries must load only when used
    code = ("import runner.evaluate.metrics, sys; "
            "assert 'rouge_score' not in sys.modules and 'sacrebleu' not in sys.modules "
            "and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def scitldr_dev(count: int) -> tuple[list[str], list[list[str]]]:
    """The first sentence of each abstract (a lead baseline), and the paper's several reference TLDRs."""
    from real_models import SHARED_DATA

    path = SHARED_DATA / "summ_scitldr" / "dev.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:count]]
    return [r["source"][0] for r in rows], [r["target"] for r in rows]


def test_multi_reference_scores_are_the_libraries_own_on_scitldr():
    import sacrebleu
    from rouge_score import rouge_scorer

    predictions, references = scitldr_dev(40)
    assert max(map(len, references)) > 1  # dev papers have 2-3 TLDRs
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {t: sum(scorer.score_multi(refs, p)[t].fmeasure for p, refs in zip(predictions, references)) / 40
                for t in ("rouge1", "rouge2", "rougeL")}
    assert metrics.rouge(predictions, references) == expected
    width = max(map(len, references))
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    assert metrics.bleu(predictions, references) == sacrebleu.corpus_bleu(predictions, streams).score
    # more references can only help: each paper's best reference beats its first alone
    first_only = metrics.rouge(predictions, [refs[0] for refs in references])
    assert all(expected[t] >= first_only[t] for t in expected) and expected["rouge1"] > first_only["rouge1"]


def test_exact_match_counts_a_prediction_equal_to_any_reference():
    assert metrics.exact_match(["b", "x", " c  d"], [["a", "b"], ["y"], ["c d"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty list of references"):
        metrics.exact_match(["a"], [[]])
