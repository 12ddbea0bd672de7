"""Goals, threshold fitting (checked against a brute-force search) and the frontier."""

import time

import numpy as np
import pytest

from router import (
    CostModel, EscalationPolicy, RouterError, TargetAccuracy, TargetAgreement, TeacherBudget,
    cascade_predictions, fit_policy, frontier, parse_goal,
)


def _one_hot_ish(top, conf, k):
    """Probabilities with `conf` on label `top` and the rest spread evenly."""
    probs = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(len(top)), top] = conf
    return probs


def _split(seed, n=2000, k=4, teacher_accuracy=0.9, always_right=()):
    """A student right with probability equal to its confidence (so good when confident), a teacher
    right with probability `teacher_accuracy`, and labels; classes in `always_right` are never wrong."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(1 / k + 0.05, 1.0, size=n)
    student_top = rng.integers(0, k, size=n)
    right = (rng.random(n) < conf) | np.isin(student_top, always_right)
    labels = np.where(right, student_top, (student_top + rng.integers(1, k, size=n)) % k)
    teacher_right = rng.random(n) < teacher_accuracy
    teacher_top = np.where(teacher_right, labels, (labels + rng.integers(1, k, size=n)) % k)
    teacher_conf = rng.uniform(0.5, 1.0, size=n)
    return _one_hot_ish(student_top, conf, k), _one_hot_ish(teacher_top, teacher_conf, k), labels


def _outcome(student, teacher, labels, escalate):
    """Escalation rate, accuracy and teacher agreement of the cascade, computed directly."""
    answers = cascade_predictions(student, teacher, escalate)
    return escalate.mean(), np.mean(answers == labels), np.mean(answers == teacher.argmax(axis=1))


def _brute_force_rate(goal, scores, student, teacher, labels):
    """Escalation rate chosen by trying every threshold in a Python loop."""
    candidates = sorted({min(0.0, scores.min()), *scores.tolist(), np.inf})
    teacher_accuracy = np.mean(teacher.argmax(axis=1) == labels)
    feasible = []
    for t in candidates:
        rate, accuracy, agreement = _outcome(student, teacher, labels, scores < t)
        if isinstance(goal, TeacherBudget):
            feasible.append(rate <= goal.max_share)
        elif isinstance(goal, TargetAgreement):
            feasible.append(agreement >= goal.value)
        else:
            feasible.append(accuracy >= (teacher_accuracy if goal.value is None else goal.value))
    if isinstance(goal, TeacherBudget):
        best = max(i for i, ok in enumerate(feasible) if ok)
    else:
        best = feasible.index(True) if any(feasible) else len(candidates) - 1
    return np.mean(scores < candidates[best])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("measure", ["max_prob", "margin", "neg_entropy"])
@pytest.mark.parametrize("goal", ["accuracy>=teacher", "accuracy>=0.85", "agreement>=0.93", "budget<=0.2",
                                  "accuracy>=0.999"])
def test_vectorised_choice_matches_brute_force(seed, measure, goal):
    student, teacher, labels = _split(seed, n=300)
    if seed % 2:  # coarse confidences, so many scores tie
        student = _one_hot_ish(student.argmax(axis=1), np.round(student.max(axis=1), 1), student.shape[1])
    policy = fit_policy(student, teacher, labels, goal, measure=measure, calibrate=seed < 2)
    expected = _brute_force_rate(parse_goal(goal), policy.scores(student), student, teacher, labels)
    assert policy.escalate_mask(student).mean() == expected
    assert policy.validation["escalation_rate"] == expected


@pytest.mark.parametrize("seed", range(3))
def test_accuracy_of_the_teacher_is_met_without_escalating_everything(seed):
    student, teacher, labels = _split(seed)
    policy = fit_policy(student, teacher, labels, TargetAccuracy(None))
    rate, accuracy, _ = _outcome(student, teacher, labels, policy.escalate_mask(student))
    assert accuracy >= np.mean(teacher.argmax(axis=1) == labels)
    assert 0.0 < rate < 1.0
    assert policy.goal == "accuracy>=teacher"


@pytest.mark.parametrize("seed", range(3))
def test_fixed_accuracy_and_agreement_targets_are_met(seed):
    student, teacher, labels = _split(seed)
    _, accuracy, _ = _outcome(student, teacher, labels, fit_policy(student, teacher, labels, "accuracy>=0.9")
                              .escalate_mask(student))
    assert accuracy >= 0.9
    agreement_policy = fit_policy(student, teacher, None, TargetAgreement(0.97))
    _, _, agreement = _outcome(student, teacher, labels, agreement_policy.escalate_mask(student))
    assert agreement >= 0.97
    assert agreement_policy.temperature == 1.0 and "cascade_accuracy" not in agreement_policy.validation


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("share", [0.0, 0.05, 0.1, 0.5])
def test_teacher_budget_is_never_exceeded_and_is_used(seed, share):
    student, teacher, labels = _split(seed)
    rate = fit_policy(student, teacher, labels, TeacherBudget(share)).escalate_mask(student).mean()
    assert share - 1 / len(labels) <= rate <= share  # continuous scores: one item's resolution


def test_unreachable_goal_escalates_everything_and_says_so():
    student, teacher, labels = _split(0, teacher_accuracy=0.8)
    policy = fit_policy(student, teacher, labels, TargetAccuracy(0.99))
    assert policy.escalate_mask(student).all()
    assert policy.goal == "accuracy>=0.99 (unreachable: escalating all)"


def test_per_class_thresholds_spare_a_class_the_student_never_gets_wrong():
    student, teacher, labels = _split(5, n=4000, k=3, teacher_accuracy=0.95, always_right=(0,))
    goal = TargetAccuracy(None)
    global_only = fit_policy(student, teacher, labels, goal, calibrate=False)
    per_class = fit_policy(student, teacher, labels, goal, calibrate=False, per_class=True)
    assert 0 in per_class.class_thresholds
    assert per_class.class_thresholds[0] < per_class.threshold == global_only.threshold
    rate, accuracy, _ = _outcome(student, teacher, labels, per_class.escalate_mask(student))
    assert rate < global_only.escalate_mask(student).mean()
    assert accuracy >= np.mean(teacher.argmax(axis=1) == labels)
    assert per_class.goal == "accuracy>=teacher, per-class"


@pytest.mark.parametrize("seed", range(3))
def test_several_class_overrides_keep_the_goal_together(seed):
    student, teacher, labels = _split(seed, n=3000, k=4, teacher_accuracy=0.95, always_right=(0, 1))
    policy = fit_policy(student, teacher, labels, "accuracy>=teacher", calibrate=False, per_class=True)
    assert {0, 1} <= set(policy.class_thresholds)
    _, accuracy, _ = _outcome(student, teacher, labels, policy.escalate_mask(student))
    assert accuracy >= np.mean(teacher.argmax(axis=1) == labels)


def test_per_class_greedy_counts_the_slack_earlier_classes_used():
    # (score, student's class, student right); the teacher is always right.
    items = [(0.99, 0, True), (0.8, 0, False), (0.8, 0, False), (0.95, 1, True), (0.7, 1, False),
             (0.9, 2, True), (0.65, 2, False)]
    scores, top, right = (np.array(column) for column in zip(*items))
    labels = np.where(right, top, (top + 1) % 3)
    student = _one_hot_ish(top, scores, 3)
    teacher = _one_hot_ish(labels, np.full(7, 0.9), 3)
    # Goal 0.85: escalating the four items below 0.9 gives 7/7, all but one of them 6/7, fewer fails.
    # Global threshold 0.9. Class 0 cannot drop its tied pair (5/7); class 1 (more items than
    # class 2, so first) can drop its 0.7 item (6/7); class 2 then has no slack left.
    policy = fit_policy(student, teacher, labels, "accuracy>=0.85", calibrate=False, per_class=True,
                        min_class_support=1)
    assert policy.threshold == pytest.approx(0.9)
    assert policy.class_thresholds == {1: 0.0}
    rate, accuracy, _ = _outcome(student, teacher, labels, policy.escalate_mask(student))
    assert (rate, accuracy) == (3 / 7, 6 / 7)


def test_a_student_that_is_always_sure_still_gets_a_valid_policy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    student = np.eye(3)[labels]  # always right, so the fitted temperature is the smallest allowed
    teacher = _one_hot_ish((labels + (rng.random(200) < 0.1)) % 3, np.full(200, 0.9), 3)
    policy = fit_policy(student, teacher, labels, "agreement>=1.0")
    assert policy.temperature == pytest.approx(0.05, rel=1e-3)
    assert policy.threshold <= 1.0
    assert policy.escalate_mask(student).all()
    assert EscalationPolicy(threshold=1.0, temperature=0.05).escalate_mask(student).all()


def test_per_class_skips_classes_below_the_support():
    student, teacher, labels = _split(5, n=4000, k=3, teacher_accuracy=0.95, always_right=(0,))
    policy = fit_policy(student, teacher, labels, "accuracy>=teacher", calibrate=False, per_class=True,
                        min_class_support=10_000)
    assert policy.class_thresholds == {}


def test_validation_figures_describe_the_fitted_policy():
    student, teacher, labels = _split(1)
    policy = fit_policy(student, teacher, labels, "accuracy>=teacher")
    rate, accuracy, agreement = _outcome(student, teacher, labels, policy.escalate_mask(student))
    v = policy.validation
    assert (v["escalation_rate"], v["cascade_accuracy"], v["teacher_agreement"]) == (rate, accuracy, agreement)
    assert v["student_accuracy"] == np.mean(student.argmax(axis=1) == labels)
    assert v["teacher_accuracy"] == np.mean(teacher.argmax(axis=1) == labels)
    assert {"ece_before", "ece_after"} <= set(v)


def test_goals_that_cannot_be_fitted_are_rejected():
    student, teacher, labels = _split(0, n=100)
    with pytest.raises(RouterError, match="labels"):
        fit_policy(student, teacher, None, "accuracy>=teacher")
    with pytest.raises(RouterError, match="per-class"):
        fit_policy(student, teacher, labels, "budget<=0.1", per_class=True)
    with pytest.raises(RouterError, match="shape"):
        fit_policy(student, teacher[:50], labels, "budget<=0.1")


def test_fitting_100k_items_is_fast():
    student, teacher, labels = _split(0, n=100_000, k=10)
    start = time.perf_counter()
    fit_policy(student, teacher, labels, "accuracy>=teacher", calibrate=False, per_class=True)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text, goal", [
    ("accuracy>=teacher", TargetAccuracy(None)),
    (" Accuracy >= teacher ", TargetAccuracy(None)),
    ("accuracy>=0.93", TargetAccuracy(0.93)),
    ("agreement >= 0.97", TargetAgreement(0.97)),
    ("budget<=0.10", TeacherBudget(0.1)),
    ("budget <= 1", TeacherBudget(1.0)),
])
def test_parse_goal_accepts_the_documented_forms(text, goal):
    assert parse_goal(text) == goal
    assert parse_goal(str(goal)) == goal


@pytest.mark.parametrize("text", ["accuracy>0.9", "agreement>=teacher", "budget>=0.1", "accuracy>=1.5",
                                  "accuracy>=high", "", "latency<=5", "budget<=-0.1"])
def test_parse_goal_rejects_other_forms(text):
    with pytest.raises(RouterError) as err:
        parse_goal(text)
    assert "accuracy>=teacher" in str(err.value) or "[0, 1]" in str(err.value)


def test_frontier_spans_student_only_to_teacher_only():
    student, teacher, labels = _split(2)
    costs = CostModel(student_units=1.0, teacher_units=50.0)
    points = frontier(student, teacher, labels, EscalationPolicy(), costs, n_points=21)
    rates = [p.escalation_rate for p in points]
    assert 2 <= len(points) <= 21
    assert rates[0] == 0.0 and rates[-1] == 1.0
    assert all(a <= b for a, b in zip(rates, rates[1:]))
    assert points[0].accuracy == np.mean(student.argmax(axis=1) == labels)
    assert points[-1].accuracy == np.mean(teacher.argmax(axis=1) == labels)
    assert points[-1].teacher_agreement == 1.0
    for p in points:
        rate, accuracy, agreement = _outcome(student, teacher, labels, EscalationPolicy().scores(student) < p.threshold)
        assert (p.escalation_rate, p.accuracy, p.teacher_agreement) == (rate, accuracy, agreement)
        assert p.cost_per_1000 == pytest.approx(1000 * (1.0 + 50.0 * rate))


def test_frontier_without_labels_has_no_accuracy():
    student, teacher, _ = _split(2, n=200)
    points = frontier(student, teacher, None, EscalationPolicy(measure="neg_entropy"), CostModel(), n_points=5)
    assert all(p.accuracy is None for p in points)
    assert points[0].escalation_rate == 0.0 and points[-1].escalation_rate == 1.0
