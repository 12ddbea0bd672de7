"""Online control's shared state (``serving.live``) on fake evidence: a new student starts from a
safe point (the top of its range, or ``routing.threshold``) and comes down; a seed student that
escalates everything is held there; replicas and restarts share one threshold; a replica not
yet swapped does not bring the previous student back, a rollback does."""

from __future__ import annotations

import asyncio
import fcntl
import json
from types import SimpleNamespace

import numpy as np
import pytest

from distill.registry import Registry
from router import EscalationPolicy
from router.controller import LiveEvidence, threshold_grid
from serving.live import LiveControl
from serving.stores import SHADOW_DOCUMENT, FileStateStore

GOAL = "agreement>=0.97"
FITTED = EscalationPolicy(threshold=0.3, goal=GOAL, validation={"teacher_agreement": 0.98})


def control(root, goal: str, *args, **kwargs) -> LiveControl:
    """A replica's live control over the local stores in ``root`` (the replicas of a test share it)."""
    return LiveControl(Registry(root), FileStateStore(root), goal, *args, **kwargs)


def evidence(rng: np.random.Generator, version: str, policy: EscalationPolicy, threshold: float, items: int = 100) -> SimpleNamespace:
    """One request's evidence: confidence ~ U(0, 1), the student disagreeing with probability
    0.4 (1 - c)^2, items below ``threshold`` escalated (known), 20 % of the rest audited."""
    confidence = rng.random(items)
    escalated = confidence < threshold
    return SimpleNamespace(student=SimpleNamespace(version=version, probs=np.zeros((items, 3))), policy=policy,
                           plan=SimpleNamespace(confidence=confidence), known=escalated | (rng.random(items) < 0.2),
                           agreed=rng.random(items) >= 0.4 * (1 - confidence) ** 2)


def serve(live: LiveControl, rng: np.random.Generator, version: str, policy: EscalationPolicy = FITTED, requests: int = 1) -> None:
    """``requests`` requests routed at the replica's threshold for ``version``, each synced."""
    for _ in range(requests):
        threshold = live.threshold(version, policy, 3)
        live.observe(evidence(rng, version, policy, policy.threshold if threshold is None else threshold))
        live.sync()


def test_a_new_student_starts_at_the_top_and_comes_down_to_the_goal(tmp_path):
    live, rng = control(tmp_path, GOAL, teacher_budget=1.0), np.random.default_rng(0)
    assert live.threshold("student-v1") is None  # nothing to start it from without its policy
    assert live.threshold("student-v1", FITTED, 3) == 1.0  # its first answers start at the top, before any sync
    live.observe(evidence(rng, "student-v1", FITTED, 1.0))
    live.sync()  # the shared state names the student: every replica routes it from there
    assert live.threshold("student-v1") == 1.0
    # 100 items: not yet a step (one per 200)
    assert live.status.student == "student-v1" and live.status.threshold == 1.0 and live.status.fitted_threshold == 0.3
    assert live.status.updated_at is None and live.status.held is None
    serve(live, rng, "student-v1", requests=300)
    # served agreement 1 - 0.4 (1 - t)^3 / 3 meets 0.97 from t = 0.40
    assert 0.4 <= live.status.threshold <= 0.5 and live.status.held and live.status.bound >= 0.97, live.status


def test_a_seed_student_that_escalates_everything_is_held_there(tmp_path):
    seed = EscalationPolicy(threshold=1.0, goal="shadow: escalate all", validation={"teacher_agreement": 0.98})
    live, rng = control(tmp_path, GOAL, teacher_budget=1.0), np.random.default_rng(1)
    serve(live, rng, "student-seed", seed, requests=40)
    assert live.status.threshold == 1.0 and live.status.held and len(live.history()) >= 15
    # the next student starts afresh, from the top too, and comes down
    serve(live, rng, "student-v2", requests=100)
    assert live.status.student == "student-v2" and live.status.threshold < 0.6


def test_routing_threshold_is_the_start_when_set(tmp_path):
    live, rng = control(tmp_path, GOAL, teacher_budget=1.0, start_threshold=0.9), np.random.default_rng(2)
    assert live.threshold("student-v1", FITTED, 3) == pytest.approx(0.9)  # before the state names it, too
    serve(live, rng, "student-v1")
    assert live.status.threshold == pytest.approx(0.9)


def test_a_budget_goal_starts_from_the_fitted_threshold(tmp_path):
    live, rng = control(tmp_path, "budget<=0.10", teacher_budget=1.0), np.random.default_rng(3)
    assert live.threshold("student-v1", FITTED, 3) == pytest.approx(0.3)
    serve(live, rng, "student-v1")
    assert live.status.threshold == pytest.approx(0.3)


def test_an_accuracy_goal_without_a_validated_agreement_leaves_control_off(tmp_path):
    unvalidated = EscalationPolicy(threshold=0.3, goal="accuracy>=teacher")
    live, rng = control(tmp_path, "accuracy>=teacher", teacher_budget=1.0), np.random.default_rng(4)
    assert live.threshold("student-v1", unvalidated, 3) is None
    serve(live, rng, "student-v1", unvalidated, requests=5)
    assert live.threshold("student-v1") is None and live.status.threshold is None


def test_replicas_share_the_threshold_and_a_restart_starts_from_it(tmp_path):
    a, b, rng = control(tmp_path, GOAL, 1.0), control(tmp_path, GOAL, 1.0), np.random.default_rng(5)
    for _ in range(60):
        serve(a, rng, "student-v1")
        serve(b, rng, "student-v1")
    a.sync()
    assert a.status.threshold == b.status.threshold < 1.0 and a.status.evidence_items == pytest.approx(12_000)
    restarted = control(tmp_path, GOAL, 1.0)
    assert restarted.threshold("student-v1") is None  # nothing read yet
    restarted.sync()  # as a replica does once ready, before any traffic
    assert restarted.threshold("student-v1") == a.status.threshold


def test_a_replica_not_yet_swapped_does_not_bring_the_previous_student_back(tmp_path):
    a, b, rng = control(tmp_path, GOAL, 1.0), control(tmp_path, GOAL, 1.0), np.random.default_rng(6)
    serve(a, rng, "student-v1", requests=60)
    v1_threshold = a.status.threshold
    serve(a, rng, "student-v2")  # promoted: a sees the new student (100 items, no step yet)
    serve(b, rng, "student-v1", requests=3)  # b's model servers still answer with the old one
    assert b.status.student == a.sync().student == "student-v2" and a.status.threshold == 1.0
    # b routes the old student's answers at its last live threshold, not at its safe start
    assert b.threshold("student-v1", FITTED, 3) == v1_threshold < 1.0
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "CURRENT").write_text('{"version": "student-v1"}\n')  # as Registry.promote writes it
    serve(b, rng, "student-v1")  # a rollback: the registry points at the old student again
    assert b.status.student == "student-v1" and b.status.threshold == 1.0  # afresh, from the top
    serve(a, rng, "student-v2")  # now a replica not yet swapped back
    assert a.status.student == "student-v1"
    (tmp_path / "student" / "CURRENT").unlink()  # a registry that names no student: only stale_s tells
    late = control(tmp_path, GOAL, 1.0, stale_s=0.0)  # past stale_s, a student's evidence switches control to it
    serve(late, rng, "student-v2")
    assert late.status.student == "student-v2"


def test_a_new_student_reaches_the_shared_state_at_once_and_the_same_one_once_a_second(tmp_path):
    now = [0.0]
    live, rng = control(tmp_path, GOAL, 1.0, clock=lambda: now[0]), np.random.default_rng(7)
    shared = lambda: json.loads((tmp_path / "live.json").read_text())  # noqa: E731
    live.observe(evidence(rng, "student-v1", FITTED, 0.3))
    asyncio.run(live.tick())
    live.observe(evidence(rng, "student-v1", FITTED, 1.0))
    asyncio.run(live.tick())  # the same student within a second: not yet
    assert shared()["status"]["student"] == "student-v1" and shared()["since_step"] == 100
    now[0] += 0.15
    live.observe(evidence(rng, "student-v2", FITTED, 1.0))
    asyncio.run(live.tick())  # a student the shared state does not name: after a tenth of a second
    assert shared()["status"]["student"] == "student-v2" and live.status.student == "student-v2"


def test_an_accuracy_goal_reads_its_feedback_outside_the_shared_lock(tmp_path):
    """Reading feedback goes to disk: under the shared lock it would hold up every replica's sync."""
    reads: list[bool] = []  # per read: whether the shared lock was free

    def outcomes(version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with (tmp_path / ".live.json.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                reads.append(True)
            except BlockingIOError:
                reads.append(False)
        return np.linspace(0, 1, 50), np.zeros(50, dtype=bool), np.zeros(50)

    live = control(tmp_path, "accuracy>=0.9", teacher_budget=1.0, outcomes=outcomes)
    serve(live, np.random.default_rng(5), "student-v1", requests=20)  # 2,000 items: about ten steps
    assert len(reads) >= 8 and all(reads), reads
    assert live.status.through == "agreement" and live.status.feedback_items == 50  # under min_feedback: held through agreement


def test_a_student_judged_in_shadow_starts_from_its_shadows_evidence_at_the_threshold_it_certifies(tmp_path):
    """The shadow kept evidence of the candidate on its own bins (serving.shadow): its first
    answers, before any sync, and the shared state start there, not at the top."""
    rng = np.random.default_rng(8)
    kept = LiveEvidence(threshold_grid("max_prob", 3))
    for _ in range(100):  # 20,000 items the shadow saw, 2 % audits above 0.5
        e = evidence(rng, "student-v2", FITTED, 0.5, items=200)
        kept.add(e.plan.confidence, e.known, e.agreed, np.where(e.plan.confidence < 0.5, 1.0, 0.2))
    FileStateStore(tmp_path).update(SHADOW_DOCUMENT, lambda _: {"version": "student-v2", "live": kept.to_dict()})
    live = control(tmp_path, GOAL, 1.0)
    first = live.threshold("student-v2", FITTED, 3)
    assert first is not None and 0.4 <= first < 0.7  # the cheapest certified: 0.40 holds the goal, the bound costs a little
    live.observe(evidence(rng, "student-v2", FITTED, first))
    live.sync()
    assert (live.status.started_from, live.status.start_threshold, live.status.threshold) == ("shadow", first, first)
    fresh = control(tmp_path / "other", GOAL, 1.0)  # no shadow evidence: the safe start
    assert fresh.threshold("student-v2", FITTED, 3) == 1.0
