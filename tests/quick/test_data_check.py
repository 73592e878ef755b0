"""`check-data`'s token length statistics (runner.data.check), without a tokenizer."""
from __future__ import annotations

from runner.data.check import length_stats


def test_length_statistics():
    assert length_stats([5, 1, 3]) == {"min": 1, "median": 3, "p95": 5, "max": 5}
