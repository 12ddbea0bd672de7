"""The real application with two ingress replicas and two student replicas: forced teacher
items stay inside the teacher budget, an admin threshold reaches every ingress replica and
survives a replica restart, an admin reload reaches every student replica, and an ingress
replica that starts while the teacher is down answers degraded, not 500.

The module's cascade is shared by its tests, so what a test changes in it (the admin threshold,
the current student, a shadow, killed ingress replicas) is put back by the ``put_back``
fixture's teardown, whether the test passed or not."""

from __future__ import annotations

import os
import shutil
import signal
from contextlib import contextmanager

import httpx
import pytest

from distill.registry import Registry
from fault_tools import IN_DOMAIN, ODD, Load, reliability_config, replica_pids, restart_ingress_replicas, running_cascade, wait_ready
from serving.shared_state import SharedRouting
from serving.stores import FileStateStore
from waiting import wait_until

pytestmark = pytest.mark.slow

TOKEN = "shared-routing-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def app(tiny_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("shared-routing") / "home"
    shutil.copytree(tiny_home, home)  # the admin threshold is written into this copy's registry
    config = reliability_config(
        home, home / "escalations",
        ingress={"num_replicas": 2, "num_cpus": 0.1},
        # poll_registry_s 0: the students never look at the registry by themselves, only on reload
        student={"placement": "deployment", "num_replicas": 2, "num_cpus": 0.1, "poll_registry_s": 0},
        # audits on: online control holds agreement>=0.97 from the configured threshold 0.9
        routing={"teacher_budget": 0.1, "teacher_timeout_s": 1.0, "audit_rate": 0.5, "goal": "agreement>=0.97"},
    )
    os.environ["CASCADE_ADMIN_TOKEN"] = TOKEN  # read by the ingress replicas when they start
    try:
        with running_cascade(config) as url:
            yield url, home
    finally:
        del os.environ["CASCADE_ADMIN_TOKEN"]


@pytest.fixture(autouse=True)
def put_back(app):
    """After each test, whether it passed or not: the ingress replicas answer again, no shadow
    runs, every student replica serves the student the test started with, and no admin
    threshold is set (every replica back on the live or configured one)."""
    url, home = app
    registry = Registry(home / "registry")
    student, history = registry.current("student"), len(registry.history("student"))
    yield
    wait_ready(url)  # a test that killed the ingress replicas may have failed before they were back
    if registry.shadow("student") is not None:
        admin(url, "shadow", {"version": None})
    if registry.current("student") != student or len(registry.history("student")) != history:  # the pointer moved meanwhile
        admin(url, "promote", {"version": student})
        admin(url, "reload")
        wait_until(lambda: served_students(url) == {student}, 60, f"every student replica to serve {student} again")
    if SharedRouting(FileStateStore(home / "registry")).read(fresh=True).threshold is not None:
        set_threshold(url, None)
        wait_until(lambda: "admin" not in threshold_sources(url), 30, "every ingress replica to drop the admin threshold")


def served_students(url: str) -> set[str]:
    """The student versions that answer 30 requests (evaluation: never logged nor counted)."""
    return {classify(url, ODD, mode="student", evaluation=True)["versions"]["student"] for _ in range(30)}


def threshold_sources(url: str) -> set[str]:
    return {httpx.get(f"{url}/v1/models", timeout=30).json()["threshold_source"] for _ in range(10)}


def classify(url: str, inputs, headers=None, **options) -> dict:
    response = httpx.post(f"{url}/v1/classify", json={"inputs": inputs, "options": options}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def set_threshold(url: str, threshold: float | None) -> None:
    admin(url, "threshold", {"threshold": threshold})


def admin(url: str, path: str, body=None) -> dict:
    response = httpx.post(f"{url}/v1/admin/{path}", json=body, headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def teacher_stopped():
    pids = replica_pids("Teacher")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_forced_teacher_items_count_in_the_budget_and_are_capped(app):
    app, _ = app
    predictions = [p for _ in range(40) for p in classify(app, ["play some jazz"] * 8, mode="teacher")["predictions"]]
    answered = sum(p["tier"] == "teacher" for p in predictions)
    # each replica's window admits max(10 %, 20 items): at most 2 x 20 of these 320
    assert answered <= 40, answered
    capped = [p for p in predictions if p["tier"] == "student"]
    assert capped and all(p["escalated"] and p["degraded"] and p["cause"] == "teacher_budget" for p in capped)
    admin = classify(app, ["play some jazz"] * 8, headers=ADMIN, mode="teacher")["predictions"]
    assert all(p["tier"] == "teacher" for p in admin), "an admin's forced items are not capped"


def test_admin_threshold_reaches_every_replica_and_survives_a_restart(app):
    app, _ = app
    set_threshold(app, 0.0)  # nothing is unsure below 0: every ODD text stays with the student (put back by put_back)

    def everyone_follows() -> bool:
        models = [httpx.get(f"{app}/v1/models", timeout=30).json() for _ in range(10)]
        answers = [classify(app, ODD)["predictions"] for _ in range(20)]
        return all(m["threshold"] == 0.0 and m["threshold_source"] == "admin" for m in models) and all(
            p["tier"] == "student" and not p["escalated"] for a in answers for p in a  # confident or audited
        )

    # the other replica re-reads the shared state within a second (SharedRouting's own test pins the second)
    wait_until(everyone_follows, 30, "both ingress replicas to route with the admin threshold 0.0")
    restart_ingress_replicas()
    wait_ready(app)
    assert everyone_follows(), "restarted replicas must start from the shared threshold"


def test_a_replica_started_while_the_teacher_is_down_answers_degraded(app):
    app, _ = app
    with teacher_stopped():
        restart_ingress_replicas()
        wait_ready(app)
        body = classify(app, ODD, headers=ADMIN, mode="teacher")  # the first request of fresh replicas
    assert all(p["tier"] == "student" and p["degraded"] for p in body["predictions"])
    assert {p["cause"] for p in body["predictions"]} <= {"teacher_timeout", "teacher_circuit_open"}


def test_an_admin_reload_reaches_every_student_replica(app):
    url, home = app
    registry = Registry(home / "registry")
    current = registry.current("student")
    other = registry.derive("student", current).version
    admin(url, "promote", {"version": other})  # put back by put_back
    assert admin(url, "reload")["student"] == other
    # the replicas the call did not reach look for reload requests every second
    wait_until(lambda: served_students(url) == {other}, 30, f"every student replica to serve the reloaded {other}")
    assert {classify(url, ODD)["versions"]["student"] for _ in range(30)} == {other}, "and keep serving it"


def test_the_controlled_threshold_is_shared_by_both_replicas_and_kept_across_restarts(app):
    url, _ = app

    def live_views() -> list[tuple]:
        models = [httpx.get(f"{url}/v1/models", timeout=30).json() for _ in range(10)]
        return [(m["threshold_source"], m["threshold"], (m["live"] or {}).get("updated_at")) for m in models]

    def stepped_and_shared() -> bool:
        classify(url, IN_DOMAIN + ODD)  # evidence for the controller
        views = live_views()
        return all(view[0] == "live" and view[2] is not None for view in views) and len(set(views)) == 1

    wait_until(stepped_and_shared, 60, "the controller to step (200 new items) and both replicas to read that step")
    views = {view[:2] for view in live_views()}
    assert len(views) == 1 and next(iter(views))[0] == "live", views  # both replicas route alike
    restart_ingress_replicas()
    wait_ready(url)
    after = {view[:2] for view in live_views()}
    assert after == views, "restarted replicas start from the shared live threshold"


def test_shadow_candidates_are_judged_on_live_traffic_under_load(app):
    url, home = app
    registry = Registry(home / "registry")
    base = registry.meta("student", registry.current("student"))

    def variant(threshold: float) -> str:
        """The serving weights with another fitted threshold: same answers, other escalations."""
        return registry.derive("student", base.version, policy={**(base.policy or {}), "threshold": threshold, "class_thresholds": {}}).version

    def wait_for(condition, what: str) -> None:
        wait_until(condition, 120, what, every_s=0.5)

    current = variant(0.9)
    worse, better = variant(1.0), variant(0.3)  # escalates everything / escalates less, agreeing alike
    admin(url, "promote", {"version": current})  # put back by put_back, and any shadow left running stopped
    admin(url, "reload")
    wait_for(lambda: classify(url, ODD)["versions"]["student"] == current, "the current student")
    with Load(url, {"inputs": IN_DOMAIN + ODD}, clients=4) as load:
        admin(url, "shadow", {"version": worse})
        wait_for(lambda: registry.shadow("student") is None, "the worse candidate's verdict")
        admin(url, "shadow", {"version": better})
        wait_for(lambda: registry.shadow("student") is None, "the better candidate's verdict")
        wait_for(lambda: load.answers and load.answers[-1].body and load.answers[-1].body["versions"]["student"] == better,
                 "the promoted candidate to serve")
    assert load.answers and all(a.status == 200 for a in load.answers), "no request may fail while shadows run, start or end"
    verdicts = [e for e in registry.history("student") if e["event"] == "shadow"][-2:]
    assert (verdicts[0]["version"], verdicts[0]["promoted"]) == (worse, False) and "escalates more" in verdicts[0]["reason"]
    assert (verdicts[1]["version"], verdicts[1]["promoted"]) == (better, True) and verdicts[1]["evidence"]["known"] >= 200
