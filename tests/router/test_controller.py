"""The online goal controller on synthetic streams whose true agreement at every threshold is
known: it converges to the cheapest threshold that meets the goal, from either side, does not
oscillate, holds the goal on the answers served from a safe start where a static threshold
misses it, keeps a floor (a seed student escalating everything), and lets the teacher budget
win when the goal needs more; accuracy goals, once outcome feedback comes, are held through the
served accuracy on a stream whose true accuracy at every threshold is known."""

from __future__ import annotations

import numpy as np
import pytest

from router import RouterError, TargetAccuracy, TargetAgreement, TeacherBudget
from router.controller import ControlSettings, LiveEvidence, LiveOutcomes, control_step, threshold_grid

GRID = threshold_grid("max_prob", 10)
TARGET = 0.97


def true_agreement(t: float) -> float:
    """Confidence ~ U(0, 1); the student disagrees with the teacher with probability
    0.4 (1 - c)^2 at confidence c: served agreement at t is 1 - 0.4 (1 - t)^3 / 3."""
    return 1 - 0.4 * (1 - t) ** 3 / 3


CHEAPEST = float(GRID[np.flatnonzero([true_agreement(t) >= TARGET for t in GRID]).min()])  # 0.40


def run(start: float, goal=TargetAgreement(TARGET), teacher_budget: float = 1.0, rounds: int = 120,
        audit_rate: float = 0.05, seed: int = 0, settings: ControlSettings = ControlSettings()) -> list[float]:
    """Serve ``rounds`` batches of 1,000 items at the live threshold, feeding the controller."""
    rng = np.random.default_rng(seed)
    evidence = LiveEvidence(GRID)
    index = int(np.abs(GRID - start).argmin())
    path = []
    for _ in range(rounds):
        threshold = GRID[index]
        scores = rng.random(1000)
        agreed = rng.random(1000) >= 0.4 * (1 - scores) ** 2
        escalated = scores < threshold
        known = escalated | (rng.random(1000) < audit_rate)
        evidence.add(scores, known, agreed)
        evidence.age(settings.window_items)
        state = control_step(evidence, index, goal, teacher_budget, settings=settings)
        index = state.index
        path.append(state.threshold)
    return path


def serve(rng: np.random.Generator, threshold: float, items: int, audit_rate: float) -> tuple[np.ndarray, ...]:
    """``items`` of the synthetic stream served at ``threshold``: scores, known, agreed, escalated."""
    scores = rng.random(items)
    agreed = rng.random(items) >= 0.4 * (1 - scores) ** 2
    escalated = scores < threshold
    return scores, escalated | (rng.random(items) < audit_rate), agreed, escalated


@pytest.mark.parametrize("start", [0.05, 0.95, 1.0])
def test_it_converges_to_the_cheapest_threshold_that_meets_the_goal(start):
    # with the defaults (5 % audits here, evidence halving past 50,000 items) the bound keeps a margin
    settled = run(start)[60:]
    assert all(true_agreement(t) >= TARGET for t in settled), "the goal must hold once settled"
    assert CHEAPEST <= min(settled) and max(settled) <= CHEAPEST + 0.08, (CHEAPEST, min(settled), max(settled))
    # more evidence narrows the bound: the controller comes within a grid step or two of the cheapest
    settled = run(start, audit_rate=0.3, rounds=200, settings=ControlSettings(window_items=1e9))[150:]
    assert all(true_agreement(t) >= TARGET for t in settled)
    assert max(settled) <= CHEAPEST + 0.025, (CHEAPEST, max(settled))


@pytest.mark.parametrize("start", [0.05, 1.0])
def test_it_does_not_oscillate(start):
    settled = np.array(run(start, rounds=200)[100:])
    moves = np.sign(np.diff(settled))
    moves = moves[moves != 0]
    reversals = int(np.sum(moves[1:] != moves[:-1]))  # up then down, or down then up
    assert reversals <= 2 and np.ptp(settled) <= 0.04 + 1e-9, (reversals, np.ptp(settled))


def test_a_failing_goal_moves_straight_up_to_a_threshold_whose_bound_meets_it():
    rng = np.random.default_rng(2)
    evidence = LiveEvidence(GRID)
    evidence.add(*serve(rng, 0.05, 5000, audit_rate=0.3)[:3])
    state = control_step(evidence, 5, TargetAgreement(TARGET))
    assert state.index > 5 + ControlSettings().max_step and state.held and state.bound >= TARGET
    assert true_agreement(state.threshold) >= TARGET and state.threshold <= CHEAPEST + 0.1


def test_thin_evidence_comes_down_by_bounded_steps_and_ample_evidence_directly():
    rng = np.random.default_rng(3)
    evidence = LiveEvidence(GRID)
    evidence.add(*serve(rng, 1.0, 200, audit_rate=0.02)[:3])  # the first items at the top: all known, but few
    top = len(GRID) - 1
    state = control_step(evidence, top, TargetAgreement(TARGET))
    assert top - ControlSettings().max_step <= state.index < top and state.held
    evidence.add(*serve(rng, 1.0, 20_000, audit_rate=0.02)[:3])
    state = control_step(evidence, top, TargetAgreement(TARGET))
    assert state.threshold <= CHEAPEST + 0.05 and true_agreement(state.threshold) >= TARGET


def test_a_fully_known_bin_still_has_an_error_and_an_all_agreeing_bin_does_not_claim_none():
    evidence = LiveEvidence(GRID)
    evidence.add(np.full(300, 0.95), np.ones(300, bool), np.ones(300, bool))  # every item known, every one agreeing
    estimate, lower = evidence.agreement()
    assert estimate[0] == 1.0 and lower[0] < 1.0  # the rate of the traffic to come is still an estimate


def test_the_answers_served_hold_the_goal_round_after_round_and_carried_evidence_brings_the_teacher_down():
    """``cascade simulate``'s setting: rounds of 1,600 items, a step per 200, 2 % audits; the
    stream is shifted, so the threshold fitted on validation (0.2 here) is too low for it. A
    student that starts afresh each round stays near the top (1,600 items certify little); one
    that starts from the evidence gathered before it (a shadow's, carried over at promotion)
    comes down from the second round on. The served answers hold the goal either way."""
    static = 0.2
    assert true_agreement(static) < TARGET
    for seed in range(5):
        rng = np.random.default_rng(seed)
        for carried in (False, True):
            evidence, shares = LiveEvidence(GRID), []
            for _ in range(4):
                evidence = evidence if carried else LiveEvidence(GRID)
                index = control_step(evidence, len(GRID) - 1, TargetAgreement(TARGET)).index if evidence.items else len(GRID) - 1
                served = static_served = teacher = 0
                for _ in range(8):
                    scores, known, agreed, escalated = serve(rng, GRID[index], 200, audit_rate=0.02)
                    served += int((escalated | agreed).sum())
                    static_served += int(((scores < static) | agreed).sum())
                    teacher += int(escalated.sum())
                    evidence.add(scores, known, agreed)
                    index = control_step(evidence, index, TargetAgreement(TARGET)).index
                assert served / 1600 >= TARGET and static_served / 1600 < TARGET, (seed, served / 1600, static_served / 1600)
                shares.append(teacher / 1600)
            if carried:
                assert max(shares[1:]) < 0.8 and shares[-1] < shares[0], (seed, shares)
            else:
                assert min(shares) > 0.8, (seed, shares)


def test_a_floor_holds_an_escalate_all_start_unless_the_budget_forces_it_down():
    rng = np.random.default_rng(4)
    evidence = LiveEvidence(GRID)
    evidence.add(*serve(rng, 1.0, 20_000, audit_rate=0.02)[:3])
    top = len(GRID) - 1
    state = control_step(evidence, top, TargetAgreement(TARGET), floor=top)
    assert state.index == top and state.held and state.bound == 1.0
    state = control_step(evidence, top, TargetAgreement(TARGET), teacher_budget=0.5, floor=top)
    assert evidence.teacher_share()[state.index] <= 0.5 and state.threshold == pytest.approx(0.5, abs=0.011)
    with pytest.raises(RouterError, match="floor"):
        control_step(evidence, top, TargetAgreement(TARGET), floor=top + 1)


def test_the_budget_wins_when_the_goal_needs_more_and_says_so():
    evidence = LiveEvidence(GRID)
    rng = np.random.default_rng(1)
    scores = rng.random(20_000)
    evidence.add(scores, np.ones(20_000, bool), rng.random(20_000) >= 0.4 * (1 - scores) ** 2)
    index = 90
    for _ in range(60):
        state = control_step(evidence, index, TargetAgreement(0.999), teacher_budget=0.2)
        index = state.index
    assert state.budget_limited and not state.held
    assert evidence.teacher_share()[index] <= 0.2 and state.threshold == pytest.approx(0.2, abs=0.011)


def test_a_budget_goal_holds_the_live_share():
    path = run(0.9, goal=TeacherBudget(0.10), rounds=60)
    assert abs(path[-1] - 0.10) <= 0.011  # confidence ~ U(0, 1): share 10 % at threshold 0.10


def test_accuracy_goals_are_held_through_the_validated_agreement():
    evidence = LiveEvidence(GRID)
    state = control_step(evidence, 50, TargetAccuracy(None), validation={"teacher_agreement": 0.98})
    assert state.target == 0.98
    with pytest.raises(RouterError, match="teacher_agreement"):
        control_step(evidence, 50, TargetAccuracy(None))


def test_evidence_merges_across_replicas_and_survives_a_round_trip():
    a, b = LiveEvidence(GRID), LiveEvidence(GRID)
    a.add(np.array([0.1, 0.95]), np.array([True, True]), np.array([True, False]))
    b.add(np.array([0.5]), np.array([False]), np.array([True]))
    a.merge(LiveEvidence.from_dict(b.to_dict()))
    assert a.items == 3 and a.known.sum() == 2 and a.disagreed.sum() == 1 and a.weight.sum() == 2
    with pytest.raises(RouterError, match="grids"):
        a.merge(LiveEvidence(threshold_grid("neg_entropy", 10)))


TEACHER_ERROR = 0.08  # the teacher is wrong on 8 % of items at every confidence


def student_error(c: np.ndarray | float) -> np.ndarray | float:
    """The student is wrong with probability 0.3 (1 - c)^2 at confidence c: below the teacher's
    rate from c = 0.48 up."""
    return 0.3 * (1 - c) ** 2


def true_accuracy(t: float) -> float:
    """Served accuracy at threshold t, confidence ~ U(0, 1): 1 - 0.08 t - 0.1 (1 - t)^3."""
    return 1 - TEACHER_ERROR * t - 0.1 * (1 - t) ** 3


def run_accuracy(goal, rounds: int = 150, feedback_rate: float = 0.2, audit_rate: float = 0.05, seed: int = 0,
                 validation: dict | None = None) -> list:
    validation = validation or {"teacher_agreement": 0.98}  # what the goal is held through before feedback suffices
    """Serve ``rounds`` batches of 1,000 items from the safe start (the top), with outcome
    feedback on ``feedback_rate`` of them; the controller steps after each batch."""
    rng = np.random.default_rng(seed)
    evidence, index = LiveEvidence(GRID), len(GRID) - 1
    scores_fb, student_fb, teacher_fb, states = [], [], [], []
    for _ in range(rounds):
        scores = rng.random(1000)
        student_wrong = rng.random(1000) < student_error(scores)
        teacher_wrong = rng.random(1000) < TEACHER_ERROR
        known = (scores < GRID[index]) | (rng.random(1000) < audit_rate)
        evidence.add(scores, known, student_wrong == teacher_wrong)
        given = rng.random(1000) < feedback_rate
        scores_fb.append(scores[given])
        student_fb.append(student_wrong[given])
        teacher_fb.append(np.where(known, teacher_wrong, np.nan)[given])
        outcomes = LiveOutcomes.from_items(GRID, *(np.concatenate(a) for a in (scores_fb, student_fb, teacher_fb)))
        state = control_step(evidence, index, goal, validation=validation, outcomes=outcomes)
        index = state.index
        states.append(state)
    return states


def test_accuracy_at_least_the_teachers_is_held_through_feedback_and_lets_a_better_student_answer():
    states = run_accuracy(TargetAccuracy(None))
    settled = [s.threshold for s in states[80:]]
    assert all(s.through == "accuracy" for s in states[80:])
    assert all(true_accuracy(t) >= 1 - TEACHER_ERROR for t in settled), "served at least as accurate as the teacher alone"
    # the student is the more accurate model above 0.48: the controller lets it answer there, and does not oscillate
    assert max(settled) <= 0.6 and np.ptp(settled) <= 0.05 + 1e-9, (min(settled), max(settled))
    assert states[-1].target == pytest.approx(1 - TEACHER_ERROR, abs=0.01) and states[-1].held


def test_a_fixed_accuracy_target_converges_into_the_thresholds_that_meet_it():
    # served accuracy meets 0.94 only between t = 0.28 and 0.72: the top (all teacher, 0.92) misses it
    meeting = [t for t in GRID if true_accuracy(t) >= 0.94]
    states = run_accuracy(TargetAccuracy(0.94))
    settled = [s.threshold for s in states[80:]]
    assert all(min(meeting) <= t <= max(meeting) for t in settled), (min(meeting), max(meeting), settled[-5:])
    assert np.ptp(settled) <= 0.05 + 1e-9 and states[-1].held


def test_an_accuracy_goal_is_held_through_the_validated_agreement_until_feedback_suffices():
    states = run_accuracy(TargetAccuracy(None), rounds=3, feedback_rate=0.15)
    assert [s.through for s in states] == ["agreement", "accuracy", "accuracy"]  # about 150, 300, 450 items: 200 needed
    assert states[0].target == 0.98


def test_evidence_gathered_beforehand_is_certified_as_a_whole_not_stepped_through():
    """A shadow's or a bulk sample's evidence: certified_start goes where repeated steps on it
    settle, however far below the top, and holds the goal there."""
    from router.controller import certified_start

    rng = np.random.default_rng(9)
    evidence = LiveEvidence(GRID)
    evidence.add(*serve(rng, 1.0, 1200, audit_rate=0.02)[:3])  # every item known, as under an all-teacher student
    top = len(GRID) - 1
    certified = certified_start(evidence, TargetAgreement(TARGET))
    index = top
    for _ in range(len(GRID)):
        index = control_step(evidence, index, TargetAgreement(TARGET)).index
    assert certified.index == index < top - ControlSettings().max_step
    assert certified.held and true_agreement(certified.threshold) >= TARGET
