"""The Ray-free service behind the ingress, driven over its real FastAPI app (``serving.http``)
with plain async fakes for the models: no Ray, milliseconds per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service_fakes import ADMIN, FakeModel, close_services, make_service  # noqa: F401  (close_services: autouse)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def test_forced_teacher_items_are_capped_by_the_budget_unless_admin(home):
    _, client, _ = make_service(home, teacher_budget=0.1)
    tiers = []
    for _ in range(40):
        body = client.post("/v1/classify", json={"inputs": "x", "options": {"mode": "teacher"}}).json()
        tiers += [(p["tier"], p["degraded"], p["cause"]) for p in body["predictions"]]
    answered = sum(t == "teacher" for t, _, _ in tiers)
    assert answered <= max(20, 0.1 * len(tiers))  # the budget's floor of 20 items per window, then 10 %
    assert all(cause == "teacher_budget" for tier, degraded, cause in tiers if tier == "student") and answered < len(tiers)
    admin = client.post("/v1/classify", json={"inputs": ["x"] * 5, "options": {"mode": "teacher"}}, headers=ADMIN).json()
    assert [p["tier"] for p in admin["predictions"]] == ["teacher"] * 5


def test_escalated_and_consulted_mean_one_thing_each(home):
    student = FakeModel("student-v1", [0.9, 0.05, 0.05], {"threshold": 0.7})  # every item confident
    # the fitted threshold: online control would start this new student with every item at the teacher
    _, client, logged = make_service(home, student=student, audit_rate=1.0, control=False)
    audited = client.post("/v1/classify", json={"inputs": ["x", "y"]}).json()["predictions"]
    assert all(p["reason"] == "audit" and p["consulted"] and not p["escalated"] and p["tier"] == "student" for p in audited)
    assert len(logged()) == 2
    teacher_down = FakeModel("teacher-v1", [0.1, 0.8, 0.1])
    teacher_down.fail = ConnectionError("teacher gone")
    _, client, logged = make_service(home / "3", teacher=teacher_down)
    refused = client.post("/v1/classify", json={"inputs": ["x"]}).json()["predictions"][0]
    assert refused["escalated"] and not refused["consulted"] and refused["degraded"] and refused["cause"] == "teacher_unavailable"
    assert logged() == []


def test_teacher_down_from_the_first_request_degrades_instead_of_failing(home):
    teacher = FakeModel("teacher-v1", [0.1, 0.8, 0.1])
    teacher.fail = ConnectionError("teacher never came up")
    _, client, _ = make_service(home, teacher=teacher)
    response = client.post("/v1/classify", json={"inputs": "x"})
    assert response.status_code == 200, response.text
    p = response.json()["predictions"][0]
    assert p["tier"] == "student" and p["degraded"] and p["cause"] == "teacher_unavailable"
    assert client.get("/v1/models").status_code == 200  # reportable without the teacher
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "teacher never came up" in ready.json()["error"]


def test_a_teacher_with_another_label_list_degrades_its_items(home):
    teacher = FakeModel("teacher-v1", [0.5, 0.5], labels=["a", "z"])
    _, client, _ = make_service(home, teacher=teacher)
    p = client.post("/v1/classify", json={"inputs": "x"}).json()["predictions"][0]
    assert p["degraded"] and p["cause"] == "teacher_unavailable"


def test_admin_threshold_is_shared_through_the_registry_and_survives_a_restart(home):
    _, first, _ = make_service(home)
    _, second, _ = make_service(home)  # another replica on the same registry
    assert second.get("/v1/models").json()["threshold_source"] == "fitted"
    set_ = first.post("/v1/admin/threshold", json={"threshold": 0.1}, headers=ADMIN)
    assert set_.status_code == 200 and set_.json() == {"threshold": 0.1, "previous": None}
    models = second.get("/v1/models").json()
    assert (models["threshold"], models["threshold_source"], models["fitted_threshold"]) == (0.1, "admin", 0.7)
    # 0.5 confidence is above 0.1: the other replica answers with the student now
    assert second.post("/v1/classify", json={"inputs": "x"}).json()["predictions"][0]["tier"] == "student"
    _, restarted, _ = make_service(home)
    assert restarted.get("/v1/models").json()["threshold"] == 0.1
    cleared = restarted.post("/v1/admin/threshold", json={"threshold": None}, headers=ADMIN).json()
    assert cleared == {"threshold": None, "previous": 0.1}
    assert first.get("/v1/models").json()["threshold_source"] == "fitted"


def test_thresholds_are_checked_against_the_students_measure(home):
    _, client, _ = make_service(home)
    bad = client.post("/v1/admin/threshold", json={"threshold": -1.0}, headers=ADMIN)
    assert bad.status_code == 422 and "[0, 1]" in bad.json()["error"]
    bad = client.post("/v1/classify", json={"inputs": "x", "options": {"threshold": 3}})
    assert bad.status_code == 422 and "[0, 1]" in bad.json()["error"]
    entropy = FakeModel("student-v1", [0.5, 0.3, 0.2], {"measure": "neg_entropy", "threshold": -0.5})
    _, client, _ = make_service(home / "e", student=entropy)
    assert client.post("/v1/admin/threshold", json={"threshold": -2.0}, headers=ADMIN).status_code == 200
    assert client.post("/v1/classify", json={"inputs": "x", "options": {"threshold": -0.1}}).status_code == 200


def test_input_checks_and_admin_token(home):
    _, client, _ = make_service(home)
    assert client.post("/v1/classify", json={"inputs": []}).status_code == 422
    assert client.post("/v1/classify", json={"inputs": " "}).json() == {"error": "inputs[0]: empty or whitespace-only text"}
    assert client.post("/v1/classify", json={"inputs": ["x"] * 300}).status_code == 413
    assert client.post("/v1/admin/threshold", json={"threshold": 0.5}).status_code == 401
    assert client.post("/v1/admin/reload", headers=ADMIN).json() == {"student": "student-v1", "teacher": "teacher-v1"}
    v2 = client.post("/v2/models/cascade/infer", json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [" "]}]})
    assert v2.status_code == 422 and "empty" in v2.json()["error"]


def test_a_student_that_is_gone_is_a_503_with_retry_after(home):
    from serving.errors import Unavailable

    student = FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.7})
    _, client, _ = make_service(home, student=student)
    assert client.post("/v1/classify", json={"inputs": "x"}).status_code == 200
    student.fail = Unavailable("student unavailable, retry shortly")
    response = client.post("/v1/classify", json={"inputs": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_promote_and_rollback_refusals_are_409(home, tiny_home, tmp_path):
    shutil.copytree(tiny_home, tmp_path / "copy")
    _, client, _ = make_service(tmp_path / "copy")
    refused = client.post("/v1/admin/promote", json={"version": "student-none"}, headers=ADMIN)
    assert refused.status_code == 409 and "student-none" in refused.json()["error"]


class ConfidenceStudent(FakeModel):
    """A student whose confidence in label "a" is the text itself ("0.83"); the teacher says "a"
    from 0.5 up and "b" below, so the student is wrong exactly below 0.5."""

    async def predict(self, texts):
        from serving.cascade import ModelOutput

        c = np.array([float(t) for t in texts])
        return ModelOutput(np.stack([c, (1 - c) / 2, (1 - c) / 2], axis=1), self.version, self.policy)


class ThresholdTeacher(FakeModel):
    async def predict(self, texts):
        from serving.cascade import ModelOutput

        c = np.array([float(t) for t in texts])
        return ModelOutput(np.where((c >= 0.5)[:, None], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]), self.version)


def test_online_control_is_shared_by_replicas_survives_restarts_and_restarts_with_a_new_student(home):
    import asyncio

    from serving.api import ClassifyOptions

    policy = {"threshold": 0.9, "goal": "agreement>=0.97"}
    make = lambda version="student-v1": make_service(  # noqa: E731
        home, student=ConfidenceStudent(version, [1, 0, 0], policy), teacher=ThresholdTeacher("teacher-v1", [1, 0, 0]),
        goal="agreement>=0.97", audit_rate=0.2)
    first, _, _ = make()
    second, second_http, _ = make()
    rng = np.random.default_rng(0)

    async def serve(service, rounds):
        for _ in range(rounds):
            texts = [f"{c:.3f}" for c in rng.uniform(0.34, 1.0, 50)]
            await service.classify(texts, ClassifyOptions())
            await asyncio.to_thread(service.live.sync)

    asyncio.run(serve(first, 200))  # 10,000 items through one replica, escalating below 0.9 at first
    asyncio.run(serve(second, 200))  # the other replica adds its evidence to the same state
    models = second_http.get("/v1/models").json()
    live = models["live"]
    # served agreement is 1 from 0.5 up and falls 1/0.66 per unit below: the goal holds from about 0.48
    assert models["threshold_source"] == "live" and 0.46 <= models["threshold"] <= 0.6, models
    assert live["held"] and live["bound"] >= 0.97 and live["estimate"] >= live["bound"] and live["fitted_threshold"] == 0.9
    restarted, restarted_http, _ = make()  # a restart starts from the shared threshold, before any traffic
    assert restarted_http.get("/v1/models").json()["threshold"] == models["threshold"]
    _, promoted_http, _ = make("student-v2")  # a new student starts control afresh, from a safe point (every item to the teacher)
    fresh = promoted_http.get("/v1/models").json()
    assert fresh["threshold_source"] == "live" and fresh["threshold"] == 1.0 and fresh["fitted_threshold"] == 0.9
    # its very first answer, before any sync has named it in the shared state, is routed from there too
    first = promoted_http.post("/v1/classify", json={"inputs": ["0.95"]}).json()["predictions"][0]
    assert (first["tier"], first["reason"]) == ("teacher", "unsure"), first


def test_evaluation_traffic_is_answered_but_never_logged(home):
    _, client, logged = make_service(home)
    body = client.post("/v1/classify", json={"inputs": ["x", "y"], "options": {"evaluation": True}}).json()
    assert [p["tier"] for p in body["predictions"]] == ["teacher", "teacher"] and body["logged"] == 0 and logged() == []
    client.post("/v1/classify", json={"inputs": ["x"]})
    assert len(logged()) == 1
