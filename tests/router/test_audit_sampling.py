"""AuditSampler draws and the Wilson interval of AgreementEstimate."""

import math

import numpy as np
import pytest

from router import AgreementEstimate, AuditSampler, RouterError


def test_audit_rate_is_within_four_standard_deviations():
    sampler = AuditSampler(rate=0.05, seed=123)
    n = 200_000
    chosen = sum(int(sampler.sample(1000).sum()) for _ in range(n // 1000))
    assert abs(chosen - n * 0.05) <= 4 * math.sqrt(n * 0.05 * 0.95)


def test_a_seed_makes_draws_reproducible():
    first, second, other = AuditSampler(0.3, seed=7), AuditSampler(0.3, seed=7), AuditSampler(0.3, seed=8)
    a, b, c = first.sample(500), second.sample(500), other.sample(500)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_extreme_rates():
    assert not AuditSampler(0.0, seed=0).sample(1000).any()
    assert AuditSampler(1.0, seed=0).sample(1000).all()
    assert AuditSampler(0.5).sample(0).shape == (0,)
    with pytest.raises(RouterError, match="audit rate"):
        AuditSampler(1.2)


def test_estimate_before_any_audit():
    estimate = AgreementEstimate()
    assert estimate.value is None
    assert estimate.interval() == (0.0, 1.0)


def test_wilson_interval_closed_forms_at_the_edges():
    z, n = 1.96, 10
    none_agree, all_agree = AgreementEstimate(), AgreementEstimate()
    none_agree.update(np.zeros(n, dtype=bool))
    all_agree.update(np.ones(n, dtype=bool))
    assert none_agree.interval(z) == pytest.approx((0.0, z * z / (n + z * z)))
    assert all_agree.interval(z) == pytest.approx((n / (n + z * z), 1.0))


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_rate, covered = 0.9, 0
    for _ in range(400):
        estimate = AgreementEstimate()
        for _ in range(4):
            estimate.update(rng.random(50) < true_rate)
        low, high = estimate.interval()
        assert estimate.audited == 200 and low <= estimate.value <= high
        covered += low <= true_rate <= high
    assert 0.92 <= covered / 400 <= 0.98
