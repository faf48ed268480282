"""Measures of generated text, shared by the benchmarks and the tiny target's build report."""

from __future__ import annotations


def distinct_ngram_ratio(tokens: list[int], n: int = 4) -> float:
    """Unique n-grams / all n-grams: 1.0 never repeats, near 0 is a loop."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
