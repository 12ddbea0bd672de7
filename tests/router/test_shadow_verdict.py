"""The shadow verdict on synthetic paired evidence: a better candidate is promoted, a worse one
rejected (on agreement or on escalations), too little evidence waits, and nothing waits forever."""

from __future__ import annotations

import numpy as np
import pytest

from router import RouterError
from router.shadow import ShadowEvidence, ShadowSettings, shadow_verdict


def evidence(n: int, current_right: float, candidate_right: float, current_esc: float, candidate_esc: float,
             known_share: float = 0.3, seed: int = 0) -> ShadowEvidence:
    """Two students as related as a candidate and its parent: one uniform draw per item decides
    both answers (and one both escalations), so they differ only where their rates differ."""
    rng = np.random.default_rng(seed)
    teacher = rng.integers(0, 5, n)
    u, v = rng.random(n), rng.random(n)
    current = np.where(u < current_right, teacher, (teacher + 1) % 5)
    candidate = np.where(u < candidate_right, teacher, (teacher + 2) % 5)
    e = ShadowEvidence()
    e.add(current, candidate, teacher, rng.random(n) < known_share, v < current_esc, v < candidate_esc)
    return e


def test_a_candidate_as_good_that_escalates_less_is_promoted():
    verdict = shadow_verdict(evidence(5000, 0.95, 0.95, 0.10, 0.05))
    assert verdict.decision == "promote" and verdict.escalation_change[2] < 0


def test_a_candidate_that_agrees_less_is_rejected():
    verdict = shadow_verdict(evidence(5000, 0.95, 0.85, 0.10, 0.05))
    assert verdict.decision == "reject" and "agrees with the teacher less" in verdict.reason


def test_a_candidate_that_escalates_more_is_rejected():
    verdict = shadow_verdict(evidence(5000, 0.95, 0.95, 0.05, 0.10))
    assert verdict.decision == "reject" and "escalates more" in verdict.reason


def test_too_little_evidence_waits_and_nothing_waits_forever():
    assert shadow_verdict(evidence(100, 0.95, 0.95, 0.10, 0.05)).decision == "wait"
    same = evidence(3000, 0.95, 0.95, 0.08, 0.08)
    assert shadow_verdict(same).decision == "wait"
    assert shadow_verdict(same, ShadowSettings(max_items=2000)).decision == "reject"
    with pytest.raises(RouterError):
        shadow_verdict(same, ShadowSettings(min_known=0))


def test_evidence_merges_across_replicas():
    a, b = evidence(1000, 0.9, 0.9, 0.1, 0.1, seed=1), evidence(1000, 0.9, 0.9, 0.1, 0.1, seed=2)
    total = ShadowEvidence.from_dict(a.to_dict())
    total.merge(b)
    assert total.items == 2000 and total.known == a.known + b.known
