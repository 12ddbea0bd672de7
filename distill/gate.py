"""The promotion gate of a refresh round (``distill.refresh``) and its figures.

Gate on the validation split, which no training run sees: the candidate must be at least as
accurate as the current student (minus a tolerance) and, at its freshly fitted policy, reach
the goal with no more escalation than the current student's policy. On the held-out feedback
(live traffic with its true outcomes, ``distill.refresh_data``) the gate reports both students'
accuracy and rejects a candidate that is worse there beyond a one-sided bound of a paired sign
test (the items only one of the two gets right): validation is a fixed sample that traffic
drifts away from, the bound keeps a few noisy items from deciding, and pairing on the same
items makes it need far fewer items than comparing two accuracies would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from distill.backends import HFClassifier
from distill.data import DataSplits
from distill.feedback import FeedbackRecord
from distill.metadata import escalation_policy
from distill.pipeline import TeacherCache
from distill.refresh_data import FeedbackSettings
from distill.sign_test import sign_test_p
from router import EscalationPolicy, fit_policy


@dataclass
class GateDecision:
    """Whether a candidate replaces the current student, and the figures behind it."""

    promote: bool
    reasons: list[str]
    figures: dict



def feedback_figures(candidate: HFClassifier, current: HFClassifier, teacher: HFClassifier,
                     holdout: Sequence[FeedbackRecord]) -> dict:
    """Accuracy of the candidate, the current student and the teacher on held-out feedback, and
    the paired counts (items only one of the two students gets right) with the sign test's p."""
    usable = [r for r in holdout if r.label in teacher.labels]
    if not usable:
        return {"feedback_items": 0, "candidate_feedback_accuracy": None, "current_feedback_accuracy": None,
                "teacher_feedback_accuracy": None, "feedback_candidate_only": 0, "feedback_current_only": 0, "feedback_p_worse": 1.0}
    texts = [r.text for r in usable]
    truth = np.array([teacher.labels.index(r.label) for r in usable])
    candidate_right = candidate.predict_proba(texts).argmax(1) == truth
    current_right = current.predict_proba(texts).argmax(1) == truth
    worse, better = int((current_right & ~candidate_right).sum()), int((candidate_right & ~current_right).sum())
    return {"feedback_items": len(usable), "candidate_feedback_accuracy": round(float(candidate_right.mean()), 4),
            "current_feedback_accuracy": round(float(current_right.mean()), 4),
            "teacher_feedback_accuracy": round(float((teacher.predict_proba(texts).argmax(1) == truth).mean()), 4),
            "feedback_candidate_only": better, "feedback_current_only": worse, "feedback_p_worse": round(sign_test_p(worse, better), 4)}


def gate(candidate: HFClassifier, current: HFClassifier, teacher: HFClassifier, splits: DataSplits, cache: TeacherCache, goal: str, tolerance: float,
         holdout: Sequence[FeedbackRecord] = (), significance: float = FeedbackSettings.significance) -> tuple[GateDecision, EscalationPolicy]:
    """Compare candidate and current student on the validation split and on held-out feedback
    (see module docstring)."""
    data = splits.validation
    labels = data.label_ids(teacher.labels)
    teacher_probs = np.exp(cache.log_probs(teacher, data))
    candidate_probs, current_probs = candidate.predict_proba(data.texts), current.predict_proba(data.texts)
    candidate_policy = fit_policy(candidate_probs, teacher_probs, labels, goal)
    # a current student without a fitted policy (a foreign model) is judged at the policy it would get
    current_policy = escalation_policy(current.meta) if current.meta and current.meta.policy else fit_policy(current_probs, teacher_probs, labels, goal)
    figures = {
        "candidate_accuracy": round(float(np.mean(candidate_probs.argmax(1) == labels)), 4),
        "current_accuracy": round(float(np.mean(current_probs.argmax(1) == labels)), 4),
        "candidate_escalation": round(float(candidate_policy.escalate_mask(candidate_probs).mean()), 4),
        "current_escalation": round(float(current_policy.escalate_mask(current_probs).mean()), 4),
        "goal": goal,
        "tolerance": tolerance,
        **feedback_figures(candidate, current, teacher, holdout),
    }
    reasons = []
    if figures["candidate_accuracy"] < figures["current_accuracy"] - tolerance:
        reasons.append(f"accuracy {figures['candidate_accuracy']:.4f} < current {figures['current_accuracy']:.4f} - {tolerance}")
    if "unreachable" in candidate_policy.goal:
        reasons.append(f"the goal '{goal}' is unreachable for the candidate")
    if figures["candidate_escalation"] > figures["current_escalation"]:
        reasons.append(f"escalation {figures['candidate_escalation']:.4f} > current {figures['current_escalation']:.4f}")
    if figures["feedback_p_worse"] < significance:
        reasons.append(f"held-out feedback accuracy {figures['candidate_feedback_accuracy']:.4f} < current "
                       f"{figures['current_feedback_accuracy']:.4f} on {figures['feedback_items']} items "
                       f"(sign test p {figures['feedback_p_worse']:.4f} < {significance})")
    return GateDecision(promote=not reasons, reasons=reasons or ["passed"], figures=figures), candidate_policy
