"""The Wilson interval is computed once (``router.audit.wilson_interval``): audit agreement and
live accuracy by tier (``/v1/stats``) both report it, and say the same of the same counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router import AgreementEstimate, RouterError
from router.audit import wilson_interval
from serving.feedback import Tally


def test_pinned_values():
    assert wilson_interval(8, 10) == pytest.approx((0.49015684672072335, 0.9433190520193067), abs=1e-15)
    half = math.sqrt(0.25 / 100 + 1 / 40_000) / 1.01  # p = 0.5, n = 100, z = 1 by hand: centred on 0.5
    assert wilson_interval(50, 100, z=1.0) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-15)


@pytest.mark.parametrize("n", [1, 7, 100, 10_000])
def test_closed_forms_at_the_edges(n):
    z = 1.96
    assert wilson_interval(0, n) == pytest.approx((0.0, z * z / (n + z * z)))
    assert wilson_interval(n, n) == pytest.approx((n / (n + z * z), 1.0))


def test_no_items_rules_out_no_rate():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("successes, n", [(-1, 3), (4, 3), (0, -1)])
def test_impossible_counts_are_refused(successes, n):
    with pytest.raises(RouterError, match="0 <= successes <= n"):
        wilson_interval(successes, n)


def test_audit_and_feedback_report_the_same_interval_of_the_same_counts():
    for correct, items in [(0, 1), (3, 4), (77, 90), (5, 5)]:
        estimate = AgreementEstimate()
        estimate.update(np.arange(items) < correct)
        tally = Tally(items=items, correct=correct)
        assert estimate.interval() == wilson_interval(correct, items)
        assert tally.figures()["interval_95"] == tuple(round(bound, 4) for bound in wilson_interval(correct, items))


def test_each_report_keeps_its_form_without_items():
    """Audit agreement reports the vacuous (0, 1) before any item; feedback's accuracy and its
    interval are null (JSON) without feedback, as before they shared the computation."""
    assert AgreementEstimate().interval() == (0.0, 1.0)
    assert Tally().figures() == {"items": 0, "correct": 0, "accuracy": None, "interval_95": None}
    assert Tally(items=10, correct=8).figures() == {"items": 10, "correct": 8, "accuracy": 0.8, "interval_95": (0.4902, 0.9433)}


def test_wider_with_fewer_items_and_contains_the_rate():
    for n in (5, 50, 500):
        low, high = wilson_interval(int(0.7 * n), n)
        assert low <= 0.7 <= high
    widths = [math.fsum((-wilson_interval(int(0.7 * n), n)[0], wilson_interval(int(0.7 * n), n)[1])) for n in (5, 50, 500)]
    assert widths == sorted(widths, reverse=True)
