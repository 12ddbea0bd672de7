"""Replica faults under load, on the real application (the student in its own deployment): the
teacher replica's process is stopped (SIGSTOP: slower than its timeout) and later killed
(SIGKILL: Serve restarts it), from outside, while clients keep sending. No answer may be
non-2xx; every unsure item the teacher did not answer must be the student's answer marked
degraded with the right cause. Then the student replica is killed: every request needs it, so
the requests it had in hand fail with 503 and Retry-After (never a 500) until Serve has
restarted it; failures and recovery time are counted."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from fault_tools import IN_DOMAIN, ODD, Load, reliability_config, replica_pids, running_cascade

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


def unsure_items(answers):
    """(answer, prediction) for every item the policy sent toward the teacher."""
    return [(a, p) for a in answers if a.status == 200 for p in a.body["predictions"] if p["reason"] == "unsure"]


def wait_until_teacher_answers(url: str, deadline_s: float) -> float:
    """Seconds until an unsure item is answered by the teacher again."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        body = httpx.post(f"{url}/v1/classify", json={"inputs": ODD}, timeout=30).json()
        if any(p["tier"] == "teacher" for p in body["predictions"]):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"the teacher did not come back within {deadline_s} s")


def test_teacher_slower_than_its_timeout_under_load(cascade):
    [pid] = replica_pids("Teacher")
    with Load(cascade, {"inputs": IN_DOMAIN + ODD}) as load:
        time.sleep(2)
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(4)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        recovery_s = wait_until_teacher_answers(cascade, 30)
        time.sleep(1)
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
    print(f"\nteacher stopped 4 s under {load.clients} clients: {len(statuses)} requests, 0 non-2xx, "
          f"{len(during)} unsure items degraded ({sorted(causes)}); teacher answering again {recovery_s:.2f} s after SIGCONT")


def test_teacher_killed_under_load_is_restarted(cascade):
    [pid] = replica_pids("Teacher")
    with Load(cascade, {"inputs": IN_DOMAIN + ODD}) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        recovery_s = wait_until_teacher_answers(cascade, 90)
        time.sleep(1)
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
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = killed_at + 90
        while not any(a.sent > killed_at + 0.5 and a.status == 200 for a in list(load.answers)):
            assert time.monotonic() < deadline, "the student did not come back within 90 s"
            time.sleep(0.1)
        time.sleep(1)
    failed = [a for a in load.answers if a.status != 200]
    assert all(a.status == 503 and a.body["retry-after"] == "1" and "student unavailable" in a.body["error"] for a in failed), \
        {a.status for a in failed}
    assert all(a.received >= killed_at for a in failed), "only the kill may fail requests"
    back = min(a.received for a in load.answers if a.sent > killed_at + 0.5 and a.status == 200)
    new_pids = replica_pids("Student")
    assert new_pids and pid not in new_pids, "Serve did not restart the student replica"
    print(f"\nstudent killed under {load.clients} clients: {len(load.answers)} requests, {len(failed)} failed (503 + Retry-After), "
          f"0 other non-2xx; answering again {back - killed_at:.1f} s after the kill (new pid {new_pids[0]})")
