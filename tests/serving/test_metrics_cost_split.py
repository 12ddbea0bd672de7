"""The ingress metrics split each item's cost between the tiers as ``router.decision`` decided
it: the student's units where the student scored the item (``student_scores``), the rest the
teacher's, in every mode and whatever the teacher did."""

from __future__ import annotations

import numpy as np
import pytest

from router import AuditSampler, CostModel, EscalationPolicy, TeacherRateLimiter, route, settle
from serving.api import ClassifyResponse, ModelVersions, Prediction
from serving.metrics import IngressMetrics

COSTS = CostModel(student_units=1.0, teacher_units=50.0)
PROBS = np.array([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4], [0.97, 0.03], [0.51, 0.49]])


def response(decisions) -> ClassifyResponse:
    predictions = [Prediction(label="a", score=0.9, tier=d.tier, escalated=d.escalated, consulted=d.consulted, degraded=d.degraded,
                              cause=d.cause, reason=d.reason, confidence=d.confidence, cost=d.cost) for d in decisions]
    return ClassifyResponse(request_id="r", predictions=predictions, versions=ModelVersions(student="s", teacher="t"), logged=0,
                            cost=float(sum(p.cost for p in predictions)))


@pytest.fixture
def metrics(monkeypatch):
    monkeypatch.setattr(IngressMetrics, "observe", lambda self, *args, **kwargs: None)  # latencies and confidences: not counted here
    return IngressMetrics(student_cost=COSTS.student_units, flush_every_s=3600.0)


@pytest.mark.parametrize("mode", ["cascade", "student", "teacher"])
@pytest.mark.parametrize("teacher_answered", [True, False])
@pytest.mark.parametrize("budget_share", [1.0, 0.2])
def test_cost_by_tier_follows_the_decisions(metrics, mode, teacher_answered, budget_share):
    plan = route(mode, len(PROBS), PROBS, EscalationPolicy(threshold=0.7), budget=TeacherRateLimiter(max_share=budget_share, min_items=0),
                 auditor=AuditSampler(rate=0.5, seed=1))
    decisions = settle(plan, teacher_answered, None if teacher_answered else "teacher_timeout", COSTS)
    metrics.record_response(response(decisions), mode, 0.01)
    pending = {labels: value for (name, labels), value in metrics._pending.items() if name == "cascade_cost_units_total"}
    student = COSTS.student_units * float(decisions.student_scored.sum())
    assert pending.get((("tier", "student"),), 0.0) == pytest.approx(student)
    assert pending.get((("tier", "teacher"),), 0.0) == pytest.approx(float(decisions.cost.sum()) - student)
