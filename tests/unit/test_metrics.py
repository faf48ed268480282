"""Text metrics."""

from __future__ import annotations

from specforge.metrics import distinct_ngram_ratio


def test_distinct_ngram_ratio():
    assert distinct_ngram_ratio([1, 2, 3, 4, 5, 6]) == 1.0
    assert distinct_ngram_ratio([1, 2] * 20) == 2 / 37
    assert distinct_ngram_ratio([1, 2]) == 0.0  # shorter than n: no n-gram at all
