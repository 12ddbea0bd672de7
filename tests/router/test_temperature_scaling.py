"""Temperature scaling and expected calibration error."""

import numpy as np
import pytest

from router import RouterError, apply_temperature, expected_calibration_error, fit_temperature


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(seed=0, n=20000, k=5, scale=3.0):
    """Labels drawn from softmax(z) (calibrated by construction) and probs softmax(scale * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, k))
    true = _softmax(logits)
    labels = np.minimum((rng.random((n, 1)) > np.cumsum(true, axis=1)).sum(axis=1), k - 1)
    return _softmax(scale * logits), labels


def _reference_ece(probs, labels, n_bins):
    """ECE with an explicit loop over bins (lo, hi]."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.sum() / len(conf) * abs(np.mean(pred[inside] == labels[inside]) - conf[inside].mean())
    return total


def test_fit_temperature_recovers_the_overconfidence_factor():
    probs, labels = _overconfident()
    temperature = fit_temperature(probs, labels)
    assert 2.7 < temperature < 3.3
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(apply_temperature(probs, temperature), labels)
    assert after < before / 3
    assert after < 0.02


def test_fit_temperature_stays_within_its_bounds():
    probs, labels = _overconfident()
    assert fit_temperature(probs, labels, bounds=(0.05, 2.0)) == pytest.approx(2.0, rel=1e-3)


def test_apply_temperature_is_a_renormalised_power():
    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    root = np.sqrt(probs) / np.sqrt(probs).sum(axis=1, keepdims=True)
    assert np.allclose(apply_temperature(probs, 2.0), root)
    assert np.allclose(apply_temperature(probs, 1.0), probs)
    sharp = apply_temperature(probs, 0.5)
    assert np.allclose(sharp.sum(axis=1), 1.0)
    assert np.array_equal(sharp.argmax(axis=1), probs.argmax(axis=1))
    assert np.all(sharp.max(axis=1) > probs.max(axis=1))


def test_apply_temperature_handles_zeros_without_nan():
    out = apply_temperature(np.array([[1.0, 0.0, 0.0]]), 3.0)
    assert np.all(np.isfinite(out)) and out[0, 0] > 0.99


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature_is_rejected(temperature):
    with pytest.raises(RouterError, match="temperature"):
        apply_temperature(np.array([[0.5, 0.5]]), temperature)


def test_ece_matches_a_loop_over_bins():
    rng = np.random.default_rng(1)
    probs = _softmax(rng.normal(scale=2.0, size=(3000, 4)))
    labels = rng.integers(0, 4, size=3000)
    for n_bins in (1, 10, 15):
        assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(_reference_ece(probs, labels, n_bins))


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin():
    probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_labels_must_match_the_probabilities():
    with pytest.raises(RouterError, match="labels"):
        fit_temperature(np.array([[0.5, 0.5]]), np.array([2]))
