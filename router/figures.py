"""The figures that describe a cascade on one split: teacher share, accuracy, agreement, cost, calibration.

Every report computes them here (fit_policy's validation figures, the frontier, `cascade eval`,
`cascade calibrate`, `cascade simulate`), so the same name always means the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router._checks import as_labels, as_probs
from router.calibration import expected_calibration_error
from router.cost import CostModel
from router.errors import RouterError
from router.policy import EscalationPolicy

__all__ = ["CascadeFigures", "cascade_figures", "cascade_predictions", "macro_f1"]


@dataclass(frozen=True)
class CascadeFigures:
    """The cascade's outcome on one split; figures that need gold labels are None without them."""

    escalation_rate: float  # teacher share: the share of items sent to the teacher
    teacher_agreement: float  # share of cascade answers equal to the teacher's top label
    cost_per_1000: float  # cost of 1000 requests at this escalation rate, under the cost model
    accuracy: float | None  # cascade accuracy
    macro_f1: float | None  # cascade macro-F1 (see macro_f1)
    student_accuracy: float | None  # the student alone
    teacher_accuracy: float | None  # the teacher alone
    student_ece: float | None  # ECE of the student's probabilities; None also when given its labels only
    calibrated_ece: float | None  # ECE after the policy's temperature; None also without a policy


def _top(answers: np.ndarray) -> np.ndarray:
    """Predicted labels from (n, k) probabilities; (n,) labels unchanged."""
    return answers.argmax(axis=1) if answers.ndim == 2 else answers


def cascade_predictions(student: np.ndarray, teacher: np.ndarray, escalate: np.ndarray) -> np.ndarray:
    """The cascade's answers: the teacher's where escalated, else the student's.

    `student` and `teacher` are (n, k) probabilities or (n,) predicted labels.
    """
    return np.where(escalate, _top(np.asarray(teacher)), _top(np.asarray(student)))


def macro_f1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in `labels` or `predicted`.

    >>> macro_f1(np.array([0, 0, 1]), np.array([0, 1, 1]))
    0.6666666666666666
    """
    k = int(max(predicted.max(), labels.max())) + 1
    true_positives = np.bincount(labels[predicted == labels], minlength=k)
    counted = np.bincount(predicted, minlength=k) + np.bincount(labels, minlength=k)  # 2 tp + fp + fn
    present = counted > 0
    return float(np.mean(2 * true_positives[present] / counted[present]))


def _checked(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Student and teacher top labels, the student's probabilities (None when given labels) and gold labels.

    Both models give (n, k) probabilities or both give (n,) int labels, n >= 1; gold labels are (n,) ints.
    """
    student, teacher = np.asarray(student), np.asarray(teacher)
    if student.shape != teacher.shape or student.ndim not in (1, 2) or len(student) == 0:
        raise RouterError("student and teacher must both be (n, k) probabilities or both (n,) labels, n >= 1; "
                          f"got shapes {student.shape} and {teacher.shape}")
    n = len(student)
    if student.ndim == 2:
        student_probs = as_probs(student, "student")
        student_top, teacher_top = student_probs.argmax(axis=1), as_probs(teacher, "teacher").argmax(axis=1)
        k = student.shape[1]
    else:
        student_probs, student_top, teacher_top = None, student, teacher
        gold_max = 0 if labels is None else np.max(labels, initial=0)
        k = 1 + int(max(student.max(), teacher.max(), gold_max))  # no k given: any id >= 0 is known
    return (as_labels(student_top, n, k, "student"), as_labels(teacher_top, n, k, "teacher"), student_probs,
            None if labels is None else as_labels(labels, n, k))


def cascade_figures(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
                    escalate: np.ndarray | EscalationPolicy, costs: CostModel = CostModel(),
                    threshold: float | None = None) -> CascadeFigures:
    """The cascade's figures on one split.

    `student` and `teacher` are (n, k) probabilities or (n,) predicted labels; `labels` the gold
    labels or None. `escalate` is the (n,) bool mask of items sent to the teacher, or a policy that
    computes it from the student's probabilities (`threshold`: its per-request override).
    The ECE figures need the student's probabilities and labels.

    >>> f = cascade_figures(np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]),
    ...                     np.array([False, True, False, False]), CostModel(student_units=1, teacher_units=50))
    >>> f.escalation_rate, f.accuracy, f.teacher_agreement, f.cost_per_1000
    (0.25, 1.0, 0.75, 13500.0)
    """
    student_top, teacher_top, student_probs, labels = _checked(student, teacher, labels)
    if isinstance(escalate, EscalationPolicy):
        if student_probs is None:
            raise RouterError("a policy needs the student's (n, k) probabilities, not its labels")
        mask = escalate.escalate_mask(student_probs, threshold)
    else:
        if threshold is not None:
            raise RouterError("threshold overrides a policy's thresholds; with an escalation mask, leave it None")
        mask = np.asarray(escalate)
        if mask.shape != student_top.shape or mask.dtype != bool:
            raise RouterError(f"escalate must be a bool mask of shape {student_top.shape}; got {mask.dtype} of shape {mask.shape}")
    answers = cascade_predictions(student_top, teacher_top, mask)
    share = float(mask.mean())
    common = {"escalation_rate": share, "teacher_agreement": float(np.mean(answers == teacher_top)),
              "cost_per_1000": costs.cost_per_1000(share)}
    if labels is None:
        return CascadeFigures(**common, accuracy=None, macro_f1=None, student_accuracy=None, teacher_accuracy=None,
                              student_ece=None, calibrated_ece=None)
    with_probs = student_probs is not None
    return CascadeFigures(
        **common,
        accuracy=float(np.mean(answers == labels)),
        macro_f1=macro_f1(answers, labels),
        student_accuracy=float(np.mean(student_top == labels)),
        teacher_accuracy=float(np.mean(teacher_top == labels)),
        student_ece=expected_calibration_error(student_probs, labels) if with_probs else None,
        calibrated_ece=(expected_calibration_error(escalate.calibrate(student_probs), labels)
                        if with_probs and isinstance(escalate, EscalationPolicy) else None),
    )
