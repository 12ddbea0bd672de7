"""The cascade's routing logic without Ray: plain async functions stand in for the models."""

from __future__ import annotations

import asyncio

import numpy as np

from router import AuditSampler, CostModel, TeacherRateLimiter
from serving.api import ClassifyOptions
from serving.cascade import Cascade, ModelOutput

LABELS = ["a", "b", "c"]


def student_with(confidence: float, top: int = 0):
    """A student whose every answer is label ``top`` with probability ``confidence``."""

    async def predict(texts):
        rest = (1 - confidence) / 2
        row = np.full(3, rest)
        row[top] = confidence
        return ModelOutput(np.tile(row, (len(texts), 1)), "student-v1", {"threshold": 0.7})

    return predict


async def teacher_says_b(texts):
    return ModelOutput(np.tile([0.1, 0.8, 0.1], (len(texts), 1)), "teacher-v1")


def make(student, teacher=teacher_says_b, **kwargs):
    written = []

    async def append(records):
        written.extend(records)
        return len(records)

    cascade = Cascade(student, teacher, append, LABELS, CostModel(1, 50), **kwargs)
    return cascade, written


def run(cascade, texts, **options):
    return asyncio.run(cascade.classify(texts, ClassifyOptions(**options)))


def test_unsure_items_go_to_the_teacher_and_are_logged():
    cascade, written = make(student_with(0.5))
    response = run(cascade, ["x", "y"])
    assert [p.tier for p in response.predictions] == ["teacher", "teacher"]
    assert [p.label for p in response.predictions] == ["b", "b"]
    assert response.logged == 2 and [r.reason for r in written] == ["unsure", "unsure"]
    assert response.cost == 2 * 51


def test_budget_caps_the_teacher_share_under_a_burst():
    budget = TeacherRateLimiter(max_share=0.1, window_s=60, min_items=5)
    cascade, written = make(student_with(0.4), budget=budget)
    predictions = [p for _ in range(100) for p in run(cascade, ["x"] * 10).predictions]
    to_teacher = sum(p.tier == "teacher" for p in predictions)
    assert to_teacher <= max(5, 0.1 * len(predictions)) and to_teacher > 0
    capped = [p for p in predictions if p.tier == "student"]
    assert capped and all(p.degraded and p.cause == "teacher_budget" and p.reason == "unsure" for p in capped)
    assert len(written) == to_teacher


def test_audit_samples_confident_items_without_changing_answers():
    cascade, written = make(student_with(0.95), auditor=AuditSampler(0.2, seed=1))
    predictions = [p for _ in range(50) for p in run(cascade, ["x"] * 20).predictions]
    audited = [p for p in predictions if p.reason == "audit"]
    assert 0.12 < len(audited) / len(predictions) < 0.28
    assert all(p.tier == "student" and p.label == "a" and not p.escalated and p.cost == 51 for p in audited)
    assert len(written) == len(audited) and {r.reason for r in written} == {"audit"}
    assert cascade.audit.audited == len(audited) and cascade.audit.value == 0.0  # student says a, teacher b


def test_mode_teacher_falls_back_to_the_student_only_for_what_the_teacher_did_not_answer():
    async def down(texts):
        raise RuntimeError("teacher replica died")

    cascade, written = make(student_with(0.5), teacher=down)
    response = run(cascade, ["x", "y"], mode="teacher")
    assert all(p.tier == "student" and p.escalated and p.degraded and not p.consulted for p in response.predictions)
    assert [p.cost for p in response.predictions] == [1.0, 1.0] and written == []  # the student ran, the teacher gave nothing
    healthy, _ = make(student_with(0.5))
    answered = run(healthy, ["x"], mode="teacher").predictions[0]
    assert answered.tier == "teacher" and answered.cost == 50.0  # the student never ran


def test_budget_counts_confident_traffic_too():
    budget = TeacherRateLimiter(max_share=0.1, window_s=60, min_items=1)
    confident, _ = make(student_with(0.95), budget=budget)
    for _ in range(90):  # 90 confident items fill the window's denominator
        run(confident, ["x"])
    unsure, _ = make(student_with(0.4), budget=budget)
    answers = [run(unsure, ["y"]).predictions[0] for _ in range(10)]
    # 100 items in the window, so 10 may reach the teacher: every unsure one here does
    assert all(p.tier == "teacher" for p in answers)


def test_audits_pause_while_the_budget_turns_items_away():
    budget = TeacherRateLimiter(max_share=0.01, window_s=60, min_items=1)
    cascade, _ = make(student_with(0.4), budget=budget, auditor=AuditSampler(1.0, seed=0))
    first = run(cascade, ["x"] * 5).predictions
    assert sum(p.tier == "teacher" for p in first) == 1 and not any(p.reason == "audit" for p in first)
