"""The online goal controller on synthetic streams whose true agreement at every threshold is
known: it converges to the cheapest threshold that meets the goal, from either side, does not
oscillate, and lets the teacher budget win when the goal needs more."""

from __future__ import annotations

import numpy as np
import pytest

from router import RouterError, TargetAccuracy, TargetAgreement, TeacherBudget
from router.controller import ControlSettings, LiveEvidence, control_step, threshold_grid

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


@pytest.mark.parametrize("start", [0.05, 0.95])
def test_it_converges_to_the_cheapest_threshold_that_meets_the_goal(start):
    # with the defaults (5 % audits here, evidence halving past 50,000 items) the bound keeps a margin
    settled = run(start)[60:]
    assert all(true_agreement(t) >= TARGET for t in settled), "the goal must hold once settled"
    assert CHEAPEST <= min(settled) and max(settled) <= CHEAPEST + 0.08, (CHEAPEST, min(settled), max(settled))
    # more evidence narrows the bound: the controller comes within a grid step or two of the cheapest
    settled = run(start, audit_rate=0.3, rounds=200, settings=ControlSettings(window_items=1e9))[150:]
    assert all(true_agreement(t) >= TARGET for t in settled)
    assert max(settled) <= CHEAPEST + 0.025, (CHEAPEST, max(settled))


def test_it_does_not_oscillate():
    settled = np.array(run(0.05, rounds=200)[100:])
    moves = np.sign(np.diff(settled))
    moves = moves[moves != 0]
    reversals = int(np.sum(moves[1:] != moves[:-1]))  # up then down, or down then up
    assert reversals <= 2 and np.ptp(settled) <= 0.04 + 1e-9, (reversals, np.ptp(settled))


def test_steps_are_bounded():
    path = np.array(run(0.05, rounds=30))
    assert np.max(np.abs(np.diff(path))) <= 2 * (GRID[1] - GRID[0]) + 1e-9


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
    assert a.items == 3 and a.known.sum() == 2 and a.disagreed.sum() == 1
    with pytest.raises(RouterError, match="grids"):
        a.merge(LiveEvidence(threshold_grid("neg_entropy", 10)))
