"""Online control's guarantee, judged on streams whose truth is known (``streams.py``): the share
of streams whose settled threshold serves under the goal stays at most alpha, stationary or
shifting midway; audits follow the doubt under the same budget; weighted evidence stays
unbiased for a candidate whose items were labelled by another student's escalations; a
confidence sequence holds at every look. The earlier controller's figures on the same streams:
``python tests/benchmarks/control_validity.py``."""

from __future__ import annotations

import numpy as np
import pytest

from router import TargetAgreement
from router.certify import allocate_audits, cs_radius, fixed_sequence
from router.controller import ControlSettings, DriftingEvidence, LiveEvidence, control_step
from streams import GRID, Certified, Stream, random_stream, run_stream

GOAL = 0.97


@pytest.mark.slow
def test_over_a_thousand_streams_at_most_five_percent_settle_under_the_goal():
    rng = np.random.default_rng(0)
    streams = [random_stream(rng, shifted=k % 4 == 3) for k in range(1000)]
    outcomes = [run_stream(s, seed, Certified(GOAL, 0.02), items=10_000 * (2 if s.shift != 1.0 else 1))
                for seed, s in enumerate(streams)]
    under = np.array([o.agreement < GOAL for o in outcomes])
    shifted = np.array([s.shift != 1.0 for s in streams])
    consulted = np.mean([o.consulted for o in outcomes])
    oracle = np.mean([s.share(s.cheapest(GOAL, after_shift=s.shift != 1.0)) for s in streams])
    print(f"\nunder the goal: {under.mean():.2%} (stationary {under[~shifted].mean():.2%}, shifted {under[shifted].mean():.2%}); "
          f"teacher consulted {consulted:.2%}, the cheapest true threshold {oracle:.2%}")
    assert under.mean() <= 0.05 and under[shifted].mean() <= 0.05
    assert consulted < 2.5 * oracle  # certainty has a price, not an unbounded one


@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_a_shifted_stream_restarts_the_evidence_and_a_stationary_one_does_not(shift):
    stream = Stream(a=3.0, scale=1.0, power=2.0, shift=shift, shift_at=10_000)  # 10 % disagreement, twice that after the shift
    rng = np.random.default_rng(1)
    settings = ControlSettings()
    evidence, index = DriftingEvidence.empty(GRID), len(GRID) - 1
    restarts = []
    for start in range(0, 20_000, 200):
        c, agreed = stream.draw(rng, 200, start)
        delta = LiveEvidence(GRID)
        delta.add(c, (c < GRID[index]) | (rng.random(200) < 0.02), agreed)
        if evidence.merge(delta, settings):
            restarts.append(start)
        index = control_step(evidence.current(), index, TargetAgreement(GOAL), settings=settings).index
    if shift == 1.0:
        assert restarts == []
    else:
        assert restarts and all(r >= stream.shift_at for r in restarts), restarts
    assert stream.agreement(GRID[index], after_shift=True) >= GOAL


def test_audits_go_where_the_student_disagrees_under_the_same_budget_and_never_to_zero():
    routed = np.array([100.0, 300.0, 600.0, 1000.0])
    q = allocate_audits(0.02, routed, np.array([0.20, 0.05, 0.01, 0.0]))
    assert (q * routed).sum() / routed.sum() == pytest.approx(0.02)
    assert q[0] > q[1] > q[2] and q[3] == pytest.approx(0.02 * 0.25)  # the floor keeps a quiet bin seen
    assert allocate_audits(0.02, routed, np.zeros(4)).tolist() == [0.02] * 4  # no evidence yet: uniform


def test_a_candidate_labelled_by_another_students_escalations_is_estimated_without_bias_when_weighted():
    """The serving student escalates (p = 1) exactly where the candidate is most often wrong in
    its own bins: counting the known items alike overstates the candidate's disagreement; the
    inverse-probability weights do not."""
    rng = np.random.default_rng(2)
    n = 200_000
    candidate = rng.random(n)  # the candidate's confidence
    serving_escalates = rng.random(n) < 0.3  # items the serving student escalated ...
    wrong = rng.random(n) < np.where(serving_escalates, 0.30, 0.05)  # ... are harder for the candidate too
    p = np.where(serving_escalates, 1.0, 0.05)
    known = serving_escalates | (rng.random(n) < 0.05)
    weighted, plain = LiveEvidence(GRID), LiveEvidence(GRID)
    weighted.add(candidate, known, ~wrong, p)
    plain.add(candidate, known, ~wrong)
    truth = 1 - wrong.mean()
    assert abs(weighted.agreement()[0][0] - truth) < 0.005
    assert plain.agreement()[0][0] < truth - 0.05


def test_the_confidence_sequence_holds_at_every_look_where_a_fixed_z_does_not():
    """Bernoulli(0.1) draws, looked at after every 50: how often the bound is ever crossed."""
    rng = np.random.default_rng(3)
    crossed_cs = crossed_z = 0
    runs = 400
    for _ in range(runs):
        x = (rng.random(20_000) < 0.1).astype(float)
        n = np.arange(50, 20_001, 50)
        mean = np.cumsum(x)[n - 1] / n
        var = mean * (1 - mean)
        crossed_cs += any(m + cs_radius(k, v, 0.05, 1000) < 0.1 for m, k, v in zip(mean, n, var))
        crossed_z += any(m + 1.645 * np.sqrt(v / k) < 0.1 for m, k, v in zip(mean, n, var))
    assert crossed_cs / runs <= 0.05 < crossed_z / runs, (crossed_cs / runs, crossed_z / runs)


def test_fixed_sequence_stops_at_the_first_threshold_that_fails_from_the_top():
    lower = np.array([0.99, 0.96, 0.98, 0.975, 1.0])  # index 0 passes but 1 fails: 0 is never reached
    assert fixed_sequence(lower, 0.97) == 2
    assert fixed_sequence(lower, 0.97, usable=np.array([True, True, True, False, True])) == 4
    assert fixed_sequence(np.array([0.99, 0.96]), 0.97) == 1  # the top itself fails: it is returned
