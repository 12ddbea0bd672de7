"""cascade_figures: golden figures on small hand-computed splits, its input forms and its errors."""

import doctest
from dataclasses import replace

import numpy as np
import pytest

import router.figures
from router import CascadeFigures, CostModel, EscalationPolicy, RouterError, cascade_figures, expected_calibration_error
from router.figures import macro_f1

COSTS = CostModel(student_units=1.0, teacher_units=50.0)
STUDENT_TOP = np.array([0, 1, 2, 0])
TEACHER_TOP = np.array([0, 2, 2, 1])
LABELS = np.array([0, 2, 1, 1])  # the student is right once, the teacher three times
SOME = np.array([False, True, False, True])  # answers [0, 2, 2, 1]: right 3 of 4, all the teacher's


def _figures(escalate, labels=LABELS, **kwargs):
    return cascade_figures(STUDENT_TOP, TEACHER_TOP, labels, escalate, COSTS, **kwargs)


def test_golden_figures_with_some_items_escalated():
    assert _figures(SOME) == CascadeFigures(
        escalation_rate=0.5, teacher_agreement=1.0, cost_per_1000=1000 * (1 + 0.5 * 50), accuracy=0.75,
        macro_f1=pytest.approx((1 + 2 / 3 + 2 / 3) / 3), student_accuracy=0.25, teacher_accuracy=0.75,
        student_ece=None, calibrated_ece=None,  # labels in, not probabilities: no calibration to measure
    )


def test_nothing_escalated_is_the_student_alone():
    f = _figures(np.zeros(4, dtype=bool))
    assert (f.escalation_rate, f.cost_per_1000, f.teacher_agreement) == (0.0, COSTS.student_only_per_1000(), 0.5)
    assert f.accuracy == f.student_accuracy == 0.25


def test_everything_escalated_is_the_teacher_alone_plus_the_student_call():
    f = _figures(np.ones(4, dtype=bool))
    assert (f.escalation_rate, f.cost_per_1000, f.teacher_agreement) == (1.0, 51_000.0, 1.0)
    assert f.accuracy == f.teacher_accuracy == 0.75


def test_without_gold_labels_only_the_label_free_figures_are_given():
    f = _figures(SOME, labels=None)
    assert (f.escalation_rate, f.teacher_agreement, f.cost_per_1000) == (0.5, 1.0, 26_000.0)
    assert {f.accuracy, f.macro_f1, f.student_accuracy, f.teacher_accuracy, f.student_ece, f.calibrated_ece} == {None}


def test_probabilities_give_the_same_figures_and_the_calibration_errors():
    student, teacher = np.eye(3)[STUDENT_TOP], np.eye(3)[TEACHER_TOP] * 0.8 + 0.2 / 3
    f = cascade_figures(student, teacher, LABELS, SOME, COSTS)
    assert f.student_ece == 0.75  # always sure, right one time in four
    assert f.calibrated_ece is None  # a mask carries no temperature
    assert (f.escalation_rate, f.accuracy, f.teacher_agreement) == (0.5, 0.75, 1.0)


def test_a_policy_computes_the_mask_and_the_calibrated_error():
    student = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.2, 0.6], [0.95, 0.03, 0.02]])
    teacher = np.eye(3)[TEACHER_TOP]
    policy = EscalationPolicy(threshold=0.7, temperature=2.0)
    f = cascade_figures(student, teacher, LABELS, policy, COSTS)
    assert replace(f, calibrated_ece=None) == cascade_figures(student, teacher, LABELS, policy.escalate_mask(student), COSTS)
    assert f.calibrated_ece == expected_calibration_error(policy.calibrate(student), LABELS)
    assert f.student_ece == expected_calibration_error(student, LABELS)
    assert cascade_figures(student, teacher, LABELS, policy, COSTS, threshold=1.0).escalation_rate == 1.0
    assert cascade_figures(student, teacher, LABELS, policy, COSTS, threshold=0.0).escalation_rate == 0.0


def test_cost_model_defaults_when_not_given():
    assert cascade_figures(STUDENT_TOP, TEACHER_TOP, None, SOME).cost_per_1000 == CostModel().cost_per_1000(0.5)


@pytest.mark.parametrize("predicted, labels, expected", [
    ([0, 2, 2, 1], [0, 2, 1, 1], 7 / 9),
    ([1, 1, 1], [1, 1, 1], 1.0),
    ([0, 0], [1, 1], 0.0),  # classes 0 and 1 both count, both with F1 0
    ([3, 3], [3, 0], (2 / 3 + 0) / 2),  # only classes present count, not 1 and 2
])
def test_macro_f1_golden(predicted, labels, expected):
    assert macro_f1(np.array(predicted), np.array(labels)) == pytest.approx(expected)


@pytest.mark.parametrize("student, teacher, labels, escalate, kwargs, match", [
    (STUDENT_TOP, TEACHER_TOP[:3], None, SOME, {}, "same|shapes"),
    (np.eye(3)[STUDENT_TOP], TEACHER_TOP, None, SOME, {}, "both"),
    (np.array([], dtype=int), np.array([], dtype=int), None, np.array([], dtype=bool), {}, "n >= 1"),
    (STUDENT_TOP, TEACHER_TOP, LABELS[:3], SOME, {}, "labels"),
    (STUDENT_TOP, TEACHER_TOP, np.array([0, 1, 2, -1]), SOME, {}, "labels"),
    (STUDENT_TOP.astype(float), TEACHER_TOP, None, SOME, {}, "student"),
    (STUDENT_TOP, TEACHER_TOP, None, SOME.astype(int), {}, "bool mask"),
    (STUDENT_TOP, TEACHER_TOP, None, SOME[:3], {}, "bool mask"),
    (STUDENT_TOP, TEACHER_TOP, None, SOME, {"threshold": 0.5}, "threshold"),
    (STUDENT_TOP, TEACHER_TOP, None, EscalationPolicy(), {}, "probabilities"),
    (-np.eye(3)[STUDENT_TOP], np.eye(3)[TEACHER_TOP], None, SOME, {}, "non-negative"),
])
def test_bad_inputs_are_rejected_with_what_was_expected(student, teacher, labels, escalate, kwargs, match):
    with pytest.raises(RouterError, match=match):
        cascade_figures(student, teacher, labels, escalate, **kwargs)


def test_docstring_examples_hold():
    assert doctest.testmod(router.figures).failed == 0
