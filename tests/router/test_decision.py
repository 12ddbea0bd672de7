"""The per-item decision (router.decision): every mode against the budget, audits and each way
the teacher can fail to answer, and the meanings of escalated / consulted / degraded / cost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from router import CAUSES, AuditSampler, CostModel, EscalationPolicy, RouterError, TeacherRateLimiter, route, settle

COSTS = CostModel(student_units=1, teacher_units=50)
POLICY = EscalationPolicy(threshold=0.7)
# max-probability confidences 0.9, 0.5, 0.95, 0.65: items 1 and 3 are unsure, 1 the least confident
PROBS = np.array([[0.9, 0.1], [0.5, 0.5], [0.95, 0.05], [0.35, 0.65]])
UNSURE = np.array([False, True, False, True])


class AlwaysAudit(AuditSampler):
    def __init__(self) -> None:
        super().__init__(1.0)


def budget_admitting(k: int) -> TeacherRateLimiter:
    """A budget that admits exactly ``k`` teacher items for the next request of 4 items."""
    return TeacherRateLimiter(max_share=k / 4, min_items=0)


def plan(mode, budget=None, auditor=None, privileged=False, threshold=None):
    probs = None if mode == "teacher" else PROBS
    return route(mode, 4, probs, POLICY if probs is not None else None, threshold, budget, auditor, privileged)


FAILURES = [None, *CAUSES[1:]]  # None: the teacher answered; else why it did not


@pytest.mark.parametrize(
    "mode, budget_k, audit, failure",
    list(itertools.product(["cascade", "student", "teacher"], [None, 0, 1, 4], [False, True], FAILURES)),
)
def test_every_combination_keeps_the_meanings(mode, budget_k, audit, failure):
    budget = budget_admitting(budget_k) if budget_k is not None else None
    p = plan(mode, budget, AlwaysAudit() if audit else None)
    d = settle(p, failure is None, failure, COSTS)
    wanted = {"cascade": UNSURE, "student": np.zeros(4, bool), "teacher": np.ones(4, bool)}[mode]
    assert p.escalated.tolist() == wanted.tolist()
    admitted = wanted.sum() if budget_k is None else min(budget_k, wanted.sum())
    assert int(p.capped.sum()) == wanted.sum() - admitted
    # audits only in cascade mode, only on confident items, and not while the budget caps
    audits_on = audit and mode == "cascade" and not p.capped.any()
    assert p.audited.tolist() == (~wanted & audits_on).tolist()
    for i, item in enumerate(d):
        assert item.escalated == wanted[i]
        assert item.consulted == bool(p.ask[i] and failure is None)
        assert item.tier == ("teacher" if item.escalated and item.consulted else "student")
        assert item.degraded == (item.escalated and item.tier == "student")
        if item.degraded:
            assert item.cause == ("teacher_budget" if p.capped[i] else failure)
        else:
            assert item.cause is None
        assert item.reason == ("audit" if p.audited[i] else "forced" if mode != "cascade" else "unsure" if wanted[i] else "confident")
        assert item.student_scored == (mode != "teacher" or item.degraded)
        assert item.cost == 1 * item.student_scored + 50 * item.consulted


def test_the_least_confident_items_get_the_teacher_first():
    p = plan("cascade", budget_admitting(1))  # unsure: item 1 (confidence 0.5) and item 3 (0.65)
    assert p.capped.tolist() == [False, False, False, True]
    assert p.ask.tolist() == [False, True, False, False]


def test_forced_teacher_items_count_in_the_budget_and_are_capped():
    budget = TeacherRateLimiter(max_share=0.1, min_items=0)
    answered = []
    for _ in range(40):
        d = settle(plan("teacher", budget), True, None, COSTS)
        answered += [item.tier == "teacher" for item in d]
    assert sum(answered) <= 0.1 * len(answered)
    assert all(item.cause == "teacher_budget" for item in settle(plan("teacher", budget), True, None, COSTS) if item.degraded)


def test_an_admin_request_is_counted_but_never_capped():
    budget = TeacherRateLimiter(max_share=0.1, min_items=0)
    d = settle(plan("teacher", budget, privileged=True), True, None, COSTS)
    assert all(item.tier == "teacher" for item in d)
    # its 4 teacher items sit in the window: an ordinary forced request now gets none
    assert not plan("teacher", budget).ask.any()


def test_a_threshold_override_replaces_the_policy_and_is_checked_against_its_measure():
    assert plan("cascade", threshold=1.0).escalated.all()
    assert not plan("cascade", threshold=0.0).escalated.any()
    with pytest.raises(RouterError, match=r"\[0, 1\]"):
        plan("cascade", threshold=-2.0)
    entropy = EscalationPolicy(measure="neg_entropy", threshold=-0.5)
    assert route("cascade", 4, PROBS, entropy, -0.1).escalated.sum() > route("cascade", 4, PROBS, entropy, -5.0).escalated.sum()


def test_settle_needs_a_known_cause_when_the_teacher_did_not_answer():
    with pytest.raises(RouterError, match="needs a cause"):
        settle(plan("teacher"), False, None, COSTS)
    with pytest.raises(RouterError, match="unknown mode"):
        route("oracle", 1)
