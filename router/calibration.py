"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) and ECE."""

from __future__ import annotations

import math

import numpy as np

from router._checks import as_labels, as_probs, check_positive
from router.errors import RouterError

_EPS = 1e-12  # probabilities are clipped here before the log
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by the row maximum for stability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as softmax(log(probs) / T): T > 1 softens, T < 1 sharpens, argmax unchanged."""
    temperature = check_positive(temperature, "temperature")
    logits = np.log(np.clip(as_probs(probs), _EPS, 1.0))
    return np.exp(_log_softmax(logits / temperature))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature in `bounds` that minimises the negative log-likelihood of `labels`.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over
    log T finds the minimum deterministically (to a relative precision of about 1e-5).
    """
    probs = as_probs(probs)
    labels = as_labels(labels, len(probs), probs.shape[1])
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise RouterError(f"bounds must satisfy 0 < low < high < inf; got {bounds!r}")
    # Shifting each row's max to 0 once keeps exp(logits / T) stable for every T > 0.
    logits = np.log(np.clip(probs, _EPS, 1.0))
    logits -= logits.max(axis=1, keepdims=True)
    label_logits = logits[np.arange(len(labels)), labels]
    scratch = np.empty_like(logits)  # reused by every evaluation: halves the time on large inputs

    def nll(log_t: float) -> float:
        """Mean -log softmax(logits / T)[label] at T = exp(log_t)."""
        t = math.exp(log_t)
        np.exp(np.divide(logits, t, out=scratch), out=scratch)
        return float(np.mean(np.log(scratch.sum(axis=1)) - label_logits / t))

    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f_c, f_d = nll(c), nll(d)
    while b - a > 1e-5:
        if f_c <= f_d:
            b, d, f_d = d, c, f_c
            c = b - _GOLDEN * (b - a)
            f_c = nll(c)
        else:
            a, c, f_c = c, d, f_d
            d = a + _GOLDEN * (b - a)
            f_d = nll(d)
    return math.exp((a + b) / 2.0)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of max-probability confidence over `n_bins` equal-width bins.

    ECE = sum over bins of (items in bin / n) * |accuracy in bin - mean confidence in bin|,
    with bins (0, 1/B], (1/B, 2/B], ..., confidence 0 falling in the first.
    """
    probs = as_probs(probs)
    labels = as_labels(labels, len(probs), probs.shape[1])
    if not isinstance(n_bins, int) or n_bins < 1:
        raise RouterError(f"n_bins must be an int >= 1; got {n_bins!r}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)
    # |sum(correct - conf)| per bin equals count * |accuracy - mean confidence|.
    return float(np.abs(gap).sum() / len(labels))
