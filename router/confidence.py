"""Confidence scores of a classifier's probabilities: higher means more sure of its top label."""

from __future__ import annotations

from typing import Callable

import numpy as np

from router._checks import as_probs
from router.errors import RouterError


def max_probability(probs: np.ndarray) -> np.ndarray:
    """Probability of each row's top label, shape (n,)."""
    return np.asarray(probs, dtype=float).max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row, shape (n,); ones when there is a single label."""
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 1:
        return np.ones(len(probs))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def negative_entropy(probs: np.ndarray) -> np.ndarray:
    """Sum of p log p over each row (0 log 0 = 0), shape (n,): 0 for a one-hot row, -log k for uniform."""
    probs = np.asarray(probs, dtype=float)
    # p * log(tiny) is exactly 0 where p == 0, so no mask is needed.
    return np.sum(probs * np.log(np.maximum(probs, np.finfo(float).tiny)), axis=1)


MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": max_probability,
    "margin": margin,
    "neg_entropy": negative_entropy,
}

# Measures whose scores lie in [0, 1], so their thresholds must too.
BOUNDED_MEASURES = frozenset({"max_prob", "margin"})


def check_measure(measure: str) -> str:
    """Return `measure` if it names an entry of MEASURES, else raise RouterError listing them."""
    if measure not in MEASURES:
        raise RouterError(f"unknown confidence measure {measure!r}; expected one of: {', '.join(MEASURES)}")
    return measure


def confidence(probs: np.ndarray, measure: str = "max_prob") -> np.ndarray:
    """Score each row of `probs` (shape (n, k)) under the named measure, shape (n,).

    >>> confidence(np.array([[0.9, 0.1]]), "margin")
    array([0.8])
    """
    return MEASURES[check_measure(measure)](as_probs(probs))
