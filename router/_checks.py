"""Argument checks shared by the router modules; each raises RouterError naming what was expected."""

from __future__ import annotations

import math

import numpy as np

from router.errors import RouterError


def as_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """Return `probs` as a float array of shape (n, k) with k >= 1, finite and non-negative."""
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise RouterError(f"{name} must be a 2-D array of shape (n, k) with k >= 1; got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise RouterError(f"{name} must hold finite, non-negative probabilities")
    return arr


def as_labels(labels: np.ndarray, n: int, k: int, name: str = "labels") -> np.ndarray:
    """Return `labels` as an int array of shape (n,) with values in [0, k), n >= 1."""
    if n == 0:
        raise RouterError(f"{name} must hold at least one item")
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise RouterError(f"{name} must be an int array of shape ({n},); got {arr.dtype} of shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= k:
        raise RouterError(f"{name} must lie in [0, {k}); got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)


def check_fraction(value: float, name: str) -> float:
    """Return `value` as a float if it lies in [0, 1]."""
    if not isinstance(value, (int, float, np.number)) or not 0.0 <= float(value) <= 1.0:
        raise RouterError(f"{name} must be a number in [0, 1]; got {value!r}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    """Return `value` as a float if it is finite and > 0."""
    if not isinstance(value, (int, float, np.number)) or not (math.isfinite(value) and value > 0):
        raise RouterError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)
