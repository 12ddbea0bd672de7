"""Confidence measures on hand-made distributions."""

import math

import numpy as np
import pytest

from router import MEASURES, RouterError, confidence, margin, max_probability, negative_entropy

PROBS = np.array([
    [0.2, 0.5, 0.3],
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
])


def test_max_probability_is_the_top_entry():
    assert np.allclose(max_probability(PROBS), [0.5, 1.0, 0.5, 1 / 3])


def test_margin_is_top1_minus_top2():
    assert np.allclose(margin(PROBS), [0.5 - 0.3, 1.0, 0.0, 0.0])


def test_margin_of_a_single_label_is_one():
    assert np.array_equal(margin(np.array([[1.0], [1.0]])), [1.0, 1.0])


def test_negative_entropy_uses_zero_log_zero():
    expected = [
        0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3),
        0.0,
        -math.log(2),
        -math.log(3),
    ]
    result = negative_entropy(PROBS)
    assert np.all(np.isfinite(result))
    assert np.allclose(result, expected)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_every_measure_ranks_a_peaked_row_above_a_flat_one(measure):
    peaked, flat = confidence(np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]), measure)
    assert peaked > flat


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_confidence_dispatches_to_the_named_measure(measure):
    assert np.array_equal(confidence(PROBS, measure), MEASURES[measure](PROBS))


def test_unknown_measure_names_the_valid_ones():
    with pytest.raises(RouterError) as err:
        confidence(PROBS, "foo")
    assert isinstance(err.value, ValueError)
    assert "'foo'" in str(err.value)
    assert all(name in str(err.value) for name in ("max_prob", "margin", "neg_entropy"))


@pytest.mark.parametrize("bad", [np.array([0.5, 0.5]), np.zeros((2, 0)), np.array([[0.5, np.nan]])])
def test_malformed_probabilities_are_rejected(bad):
    with pytest.raises(RouterError):
        confidence(bad)
