"""Replica faults under load, on the real application (the student in its own deployment): the
teacher replica's process is stopped (SIGSTOP: slower than its timeout) and later killed
(SIGKILL: Serve restarts it), from outside, while clients keep sending. No answer may be
non-2xx; every unsure item the teacher did not answer must be the student's answer marked
degraded with the right cause. Then the student replica is killed: every request needs it, so
the requests it had in hand fail with 503 and Retry-After (never a 500) until Serve has
restarted it; failures and recovery time are counted.

Each test waits for what it needs to see (the teacher answering the load before a fault, both
degradation causes during it, answers after recovery) rather than sleeping a fixed time, and the
``replicas_back`` fixture waits, after every test, passed or failed, until Serve has a teacher
and a student replica again and the teacher answers: a test that failed mid-fault does not leave
the next one a cascade without them."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from fault_tools import IN_DOMAIN, ODD, Answer, Load, reliability_config, replica_pids, running_cascade
from waiting import wait_until

pytestmark = pytest.mark.slow

TIMEOUT_CAUSES = {"teacher_timeout", "teacher_circuit_open", "teacher_overloaded"}
KILL_CAUSES = {"teacher_unavailable", "teacher_timeout", "teacher_circuit_open", "teacher_overloaded"}


@pytest.fixture(scope="module")
def cascade(tiny_home, tmp_path_factory):
    config = reliability_config(
        tiny_home, tmp_path_factory.mktemp("faults-log"),
        routing={"teacher_timeout_s": 0.5, "breaker_failures": 3, "breaker_reset_s": 1.0},
        student={"placement": "deployment", "num_cpus": 0.25},
    )
    with running_cascade(config) as url:
        yield url


@pytest.fixture(autouse=True)
def replicas_back(cascade):
    """After each test: one teacher and one student replica again, and the teacher answering."""
    yield
    wait_until(lambda: len(replica_pids("Teacher")) == len(replica_pids("Student")) == 1, 120,
               "Serve to run one teacher and one student replica again", every_s=1)
    wait_until_teacher_answers(cascade, 90)


def unsure_items(answers):
    """(answer, prediction) for every item the policy sent toward the teacher."""
    return [(a, p) for a in answers if a.status == 200 for p in a.body["predictions"] if p["reason"] == "unsure"]


def wait_until_teacher_answers(url: str, deadline_s: float) -> float:
    """Seconds until an unsure item is answered by the teacher again."""
    start = time.monotonic()

    def teacher_answers() -> bool:
        response = httpx.post(f"{url}/v1/classify", json={"inputs": ODD}, timeout=30)
        return response.status_code == 200 and any(p["tier"] == "teacher" for p in response.json()["predictions"])

    wait_until(teacher_answers, deadline_s, "the teacher to answer an unsure item again")
    return time.monotonic() - start


def teacher_answered(load: Load) -> bool:
    """Whether the teacher has answered an unsure item of the load (the healthy state before a fault)."""
    return any(p["tier"] == "teacher" for _, p in unsure_items(list(load.answers)))


def answered_since(load: Load, since: float, count: int) -> list[Answer]:
    """The load's answers to requests sent at ``since`` or later, once there are ``count`` (else [])."""
    later = [a for a in list(load.answers) if a.sent >= since]
    return later if len(later) >= count else []


def test_teacher_slower_than_its_timeout_under_load(cascade):
    [pid] = replica_pids("Teacher")
    with Load(cascade, {"inputs": IN_DOMAIN + ODD}) as load:
        wait_until(lambda: teacher_answered(load), 30, "the teacher to answer the load before the fault")
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:  # stopped until the load has seen both a timeout and the open breaker (the breaker opens after 3 timeouts)
            wait_until(lambda: {"teacher_timeout", "teacher_circuit_open"} <= {
                p["cause"] for a, p in unsure_items(list(load.answers)) if a.sent >= stopped_at + 0.6 and p["degraded"]},
                30, "unsure items degraded by the teacher's timeout and by the open breaker")
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        recovery_s = wait_until_teacher_answers(cascade, 30)
        recovered_at = time.monotonic()
        wait_until(lambda: answered_since(load, recovered_at, load.clients), 30, "answers to the load after recovery")
    statuses = [a.status for a in load.answers]
    assert statuses and set(statuses) == {200}, f"non-2xx answers: {[s for s in statuses if s != 200]}"
    during = [(a, p) for a, p in unsure_items(load.answers) if a.sent >= stopped_at + 0.6 and a.received <= resumed_at]
    assert during, "no request fell inside the fault"
    assert all(p["degraded"] and p["tier"] == "student" and p["cause"] in TIMEOUT_CAUSES for _, p in during)
    causes = {p["cause"] for _, p in during}
    assert {"teacher_timeout", "teacher_circuit_open"} <= causes
    before = [p for a, p in unsure_items(load.answers) if a.received < stopped_at]
    assert any(p["tier"] == "teacher" for p in before), "the teacher must answer before the fault"
    for _, p in unsure_items(load.answers):  # outside the window too: answered by the teacher, or degraded with a cause
        assert (p["tier"] == "teacher" and not p["degraded"]) or (p["degraded"] and p["cause"] in TIMEOUT_CAUSES)
    stats = httpx.get(f"{cascade}/v1/stats").json()["reliability"]
    assert stats["degraded"]["teacher_timeout"] >= 1 and stats["breaker"] == "closed"
    print(f"\nteacher stopped {resumed_at - stopped_at:.1f} s under {load.clients} clients: {len(statuses)} requests, 0 non-2xx, "
          f"{len(during)} unsure items degraded ({sorted(causes)}); teacher answering again {recovery_s:.2f} s after SIGCONT")


def test_teacher_killed_under_load_is_restarted(cascade):
    [pid] = replica_pids("Teacher")
    with Load(cascade, {"inputs": IN_DOMAIN + ODD}) as load:
        wait_until(lambda: teacher_answered(load), 30, "the teacher to answer the load before the kill")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        recovery_s = wait_until_teacher_answers(cascade, 90)
        recovered_at = time.monotonic()
        wait_until(lambda: answered_since(load, recovered_at, load.clients), 30, "answers to the load after recovery")
    statuses = [a.status for a in load.answers]
    assert statuses and set(statuses) == {200}, f"non-2xx answers: {[s for s in statuses if s != 200]}"
    after_kill = [(a, p) for a, p in unsure_items(load.answers) if a.sent >= killed_at]
    degraded = [p for _, p in after_kill if p["degraded"]]
    assert degraded, "the kill affected no answer"
    assert all(p["tier"] == "student" and p["cause"] in KILL_CAUSES for p in degraded)
    assert all(p["tier"] == "teacher" for _, p in after_kill if not p["degraded"])
    new_pids = replica_pids("Teacher")
    assert new_pids and pid not in new_pids, "Serve did not restart the teacher replica"
    causes = sorted({p["cause"] for p in degraded})
    print(f"\nteacher killed under {load.clients} clients: {len(statuses)} requests, 0 non-2xx, {len(degraded)} unsure items "
          f"degraded ({causes}), 0 failed requests; teacher answering again {recovery_s:.1f} s after the kill (new pid {new_pids[0]})")


def test_student_killed_under_load_is_restarted(cascade):
    [pid] = replica_pids("Student")
    with Load(cascade, {"inputs": IN_DOMAIN}) as load:
        wait_until(lambda: any(a.status == 200 for a in list(load.answers)), 30, "the student to answer the load before the kill")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any(a.sent > killed_at + 0.5 and a.status == 200 for a in list(load.answers)), 90,
                   "the restarted student to answer the load")
        recovered_at = time.monotonic()
        wait_until(lambda: answered_since(load, recovered_at, load.clients), 30, "answers to the load after recovery")
    failed = [a for a in load.answers if a.status != 200]
    assert all(a.status == 503 and a.body["retry-after"] == "1" and "student unavailable" in a.body["error"] for a in failed), \
        {a.status for a in failed}
    assert all(a.received >= killed_at for a in failed), "only the kill may fail requests"
    back = min(a.received for a in load.answers if a.sent > killed_at + 0.5 and a.status == 200)
    new_pids = replica_pids("Student")
    assert new_pids and pid not in new_pids, "Serve did not restart the student replica"
    print(f"\nstudent killed under {load.clients} clients: {len(load.answers)} requests, {len(failed)} failed (503 + Retry-After), "
          f"0 other non-2xx; answering again {back - killed_at:.1f} s after the kill (new pid {new_pids[0]})")
