"""Fit an escalation policy for a goal on a validation split, and trace the cost/quality frontier.

A fit evaluates all candidate thresholds at once: with the items sorted by confidence score, the
items a threshold escalates are a prefix of that order, so cumulative sums give, for every
prefix length m, how many cascade answers are correct and how many agree with the teacher.
The figures reported (validation figures, frontier points) come from router.figures.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from router._checks import as_labels, as_probs
from router.calibration import fit_temperature
from router.cost import CostModel
from router.errors import RouterError
from router.figures import cascade_figures
from router.goals import Goal, TargetAccuracy, TargetAgreement, TeacherBudget, parse_goal
from router.policy import EscalationPolicy

__all__ = [
    "FrontierPoint", "Goal", "TargetAccuracy", "TargetAgreement", "TeacherBudget", "fit_policy", "frontier",
    "parse_goal",
]


@dataclass(frozen=True)
class FrontierPoint:
    """The cascade's outcome on the validation split at one global threshold."""

    threshold: float  # escalate where score < threshold
    escalation_rate: float  # share of items sent to the teacher
    accuracy: float | None  # cascade accuracy; None without labels
    teacher_agreement: float  # share of cascade answers equal to the teacher's top label
    cost_per_1000: float  # cost of 1000 requests under the cost model


def _check_split(student_probs: np.ndarray, teacher_probs: np.ndarray,
                 labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The validation split as checked arrays: two non-empty (n, k) probability arrays and optional labels."""
    student_probs = as_probs(student_probs, "student_probs")
    teacher_probs = as_probs(teacher_probs, "teacher_probs")
    n, k = student_probs.shape
    if teacher_probs.shape != (n, k) or n == 0:
        raise RouterError(f"teacher_probs must have the student's non-empty shape {(n, k)}; got {teacher_probs.shape}")
    return student_probs, teacher_probs, None if labels is None else as_labels(labels, n, k)


def _count_before(hits: np.ndarray) -> np.ndarray:
    """For m = 0..len(hits), how many of hits[:m] are True."""
    return np.concatenate([[0], np.cumsum(hits)])


def _count_from(hits: np.ndarray) -> np.ndarray:
    """For m = 0..len(hits), how many of hits[m:] are True."""
    return hits.sum() - _count_before(hits)


def _prefix_tallies(student_top: np.ndarray, teacher_top: np.ndarray, labels: np.ndarray | None,
                    order: np.ndarray) -> np.ndarray:
    """Escalated, correct and teacher-agreeing counts among the items `order` when its first m escalate.

    Shape (3, len(order) + 1), column m for m = 0..len(order); the correct row is 0 without labels.
    """
    s, t = student_top[order], teacher_top[order]
    escalated = np.arange(len(order) + 1)
    agreeing = escalated + _count_from(s == t)  # escalated answers always agree with the teacher
    if labels is None:
        return np.stack([escalated, np.zeros_like(escalated), agreeing])
    y = labels[order]
    return np.stack([escalated, _count_before(t == y) + _count_from(s == y), agreeing])


def _goal_met(goal: Goal, tallies: np.ndarray, n: int, teacher_accuracy: float | None) -> np.ndarray:
    """For each column of whole-split tallies (escalated, correct, agreeing), whether the goal holds."""
    escalated, correct, agreeing = tallies / n
    if isinstance(goal, TeacherBudget):
        return escalated <= goal.max_share
    if isinstance(goal, TargetAgreement):
        return agreeing >= goal.value
    return correct >= (teacher_accuracy if goal.value is None else goal.value)


def _score_bounds(scores: np.ndarray) -> tuple[float, float]:
    """A threshold that escalates nothing and one that escalates everything (at most 1 for bounded measures)."""
    return min(0.0, float(scores.min())), float(np.nextafter(scores.max(), np.inf))


def _lower_class_thresholds(goal: Goal, scores: np.ndarray, student_top: np.ndarray, teacher_top: np.ndarray,
                            labels: np.ndarray | None, threshold: float, lower: float, totals: np.ndarray,
                            min_class_support: int, teacher_accuracy: float | None) -> dict[int, float]:
    """Greedy per-class thresholds below `threshold` that keep the goal met; see fit_policy step 4."""
    n = len(scores)
    classes, support = np.unique(student_top, return_counts=True)
    overrides: dict[int, float] = {}
    for cls in classes[np.lexsort((classes, -support))]:  # most-predicted class first, ties by id
        members = np.flatnonzero(student_top == cls)
        if len(members) < min_class_support:
            continue
        order = members[np.argsort(scores[members], kind="stable")]
        cls_scores = scores[order]
        candidates = np.unique(np.concatenate([[lower], cls_scores]))
        candidates = candidates[candidates < threshold]
        if len(candidates) == 0:
            continue
        tallies = _prefix_tallies(student_top, teacher_top, labels, order)
        now = tallies[:, np.searchsorted(cls_scores, threshold)]
        counts = np.searchsorted(cls_scores, candidates)
        met = _goal_met(goal, totals[:, None] - now[:, None] + tallies[:, counts], n, teacher_accuracy)
        if met.any():
            best = int(np.argmax(met))  # lowest candidate, hence fewest escalations, that keeps the goal
            overrides[int(cls)] = float(candidates[best])
            totals = totals - now + tallies[:, counts[best]]
    return overrides


def fit_policy(student_probs: np.ndarray, teacher_probs: np.ndarray, labels: np.ndarray | None, goal: Goal | str,
               measure: str = "max_prob", calibrate: bool = True, per_class: bool = False,
               min_class_support: int = 20) -> EscalationPolicy:
    """Fit an EscalationPolicy that meets `goal` on a validation split with as little escalation as it can.

    1. Temperature: fitted to `labels` when `calibrate` and labels are given, else 1.
    2. Scores: the measure applied to the calibrated student probabilities.
    3. Global threshold, among the candidates {min(0, lowest score), each distinct score, just above
       the highest score}: for accuracy and agreement goals the lowest candidate that meets the goal
       (if none does, the one that escalates everything, and the goal text says "unreachable");
       for a TeacherBudget the highest candidate whose escalation share is within the budget.
    4. Per class (`per_class`, accuracy and agreement goals only): classes predicted by the student
       on at least `min_class_support` items are visited most-predicted first (ties by class id);
       each gets the lowest threshold below the global one at which the goal, evaluated with the
       overrides chosen so far, still holds. It is kept only if it escalates fewer of its items.
    5. Validation figures: escalation_rate and teacher_agreement, plus cascade_accuracy,
       student_accuracy, teacher_accuracy, ece_before and ece_after when labels are given.
    """
    goal = parse_goal(goal) if isinstance(goal, str) else goal
    student_probs, teacher_probs, labels = _check_split(student_probs, teacher_probs, labels)
    n = len(student_probs)
    if labels is None and isinstance(goal, TargetAccuracy):
        raise RouterError(f"goal {goal} needs labels; without them use an agreement or budget goal")
    if per_class and isinstance(goal, TeacherBudget):
        raise RouterError("per-class thresholds need an accuracy or agreement goal, not a teacher budget")

    temperature = fit_temperature(student_probs, labels) if calibrate and labels is not None else 1.0
    policy = EscalationPolicy(measure=measure, temperature=temperature)
    scores = policy.scores(student_probs)
    student_top, teacher_top = student_probs.argmax(axis=1), teacher_probs.argmax(axis=1)
    teacher_accuracy = None if labels is None else float(np.mean(teacher_top == labels))

    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    lower, upper = _score_bounds(scores)
    candidates = np.unique(np.concatenate([[lower], sorted_scores, [upper]]))
    tallies = _prefix_tallies(student_top, teacher_top, labels, order)[:, np.searchsorted(sorted_scores, candidates)]
    met = _goal_met(goal, tallies, n, teacher_accuracy)
    text = str(goal)
    if isinstance(goal, TeacherBudget):
        best = int(np.flatnonzero(met)[-1])  # the lowest candidate escalates nothing, so one always fits
    elif met.any():
        best = int(np.argmax(met))
    else:
        best, text = len(candidates) - 1, f"{goal} (unreachable: escalating all)"
    threshold = float(candidates[best])

    overrides: dict[int, float] = {}
    if per_class and met.any():
        overrides = _lower_class_thresholds(goal, scores, student_top, teacher_top, labels, threshold, lower,
                                            tallies[:, best], min_class_support, teacher_accuracy)
        text += ", per-class"
    policy = replace(policy, threshold=threshold, class_thresholds=overrides, goal=text)
    return replace(policy, validation=_validation_figures(policy, student_probs, teacher_probs, labels))


def _validation_figures(policy: EscalationPolicy, student_probs: np.ndarray, teacher_probs: np.ndarray,
                        labels: np.ndarray | None) -> dict[str, float]:
    """The fitted policy's figures on the split it was fitted on (fit_policy step 5)."""
    f = cascade_figures(student_probs, teacher_probs, labels, policy)
    figures = {"escalation_rate": f.escalation_rate, "teacher_agreement": f.teacher_agreement}
    if labels is not None:
        figures |= {"cascade_accuracy": f.accuracy, "student_accuracy": f.student_accuracy,
                    "teacher_accuracy": f.teacher_accuracy, "ece_before": f.student_ece, "ece_after": f.calibrated_ece}
    return figures


def frontier(student_probs: np.ndarray, teacher_probs: np.ndarray, labels: np.ndarray | None,
             policy: EscalationPolicy, costs: CostModel, n_points: int = 50) -> list[FrontierPoint]:
    """Escalation rate, accuracy, agreement and cost at `n_points` global thresholds, lowest first.

    Uses the policy's measure and temperature (not its class overrides). Thresholds sit at evenly
    spaced quantiles of the scores, so escalation rates spread evenly from 0 to 1; the first
    escalates nothing and the last everything.
    """
    student_probs, teacher_probs, labels = _check_split(student_probs, teacher_probs, labels)
    if not isinstance(n_points, int) or n_points < 2:
        raise RouterError(f"n_points must be an int >= 2; got {n_points!r}")
    scores = policy.scores(student_probs)
    thresholds = np.quantile(scores, np.linspace(0.0, 1.0, n_points))
    thresholds[0], thresholds[-1] = _score_bounds(scores)
    student_top, teacher_top = student_probs.argmax(axis=1), teacher_probs.argmax(axis=1)
    points = []
    for t in np.unique(thresholds):
        f = cascade_figures(student_top, teacher_top, labels, scores < t, costs)
        points.append(FrontierPoint(float(t), f.escalation_rate, f.accuracy, f.teacher_agreement, f.cost_per_1000))
    return points
