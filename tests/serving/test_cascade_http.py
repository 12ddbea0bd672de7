"""The real application on a local Ray cluster, over real HTTP."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from distill.escalations import read_records
from serving.config import CascadeConfig
from waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cascade_config(cascade_config: CascadeConfig, tmp_path_factory) -> CascadeConfig:
    """The shared cascade's configuration (tests/serving/conftest.py), on a copy of its home: the
    hot swap below promotes and rolls back there, not in the session's tiny_home. Session-scoped,
    as ``cascade_url``, which starts the cascade from it, is."""
    home = tmp_path_factory.mktemp("cascade-http") / "home"
    shutil.copytree(cascade_config.home, home)
    return cascade_config.model_copy(update={"home": home})


IN_DOMAIN = ["play some jazz", "set an alarm for 7 am", "what is the weather tomorrow", "transfer 50 dollars to savings"]
ODD = ["zebra quantum pancake", "the of and a", "purple", "music alarm weather balance", "yes"]


def classify(url: str, inputs, **options) -> dict:
    response = httpx.post(f"{url}/v1/classify", json={"inputs": inputs, "options": options}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_ready_and_models(cascade_url):
    assert httpx.get(f"{cascade_url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{cascade_url}/readyz").status_code == 200
    models = httpx.get(f"{cascade_url}/v1/models").json()
    assert models["labels"] == ["alarm", "balance", "music", "transfer", "weather"]
    assert models["threshold"] == 0.9 and models["versions"]["student"].startswith("student-")
    assert "/v1/classify" in httpx.get(f"{cascade_url}/openapi.json").json()["paths"]
    audit = httpx.get(f"{cascade_url}/v1/stats").json()["audit"]
    assert audit["audited"] == 0 and audit["agreement"] is None  # this config turns audits off


def test_confident_items_stay_with_student_unsure_go_to_teacher_and_are_logged(cascade_url, cascade_config):
    before = {r.id for r in read_records(cascade_config.paths().escalations)}
    body = classify(cascade_url, IN_DOMAIN + ODD, top_k=2)
    predictions = body["predictions"]
    assert len(predictions) == len(IN_DOMAIN + ODD)
    for p in predictions:
        assert p["escalated"] == (p["confidence"] < 0.9)
        assert p["tier"] == ("teacher" if p["escalated"] else "student")
        assert p["reason"] == ("unsure" if p["escalated"] else "confident")
        assert p["cost"] == (51.0 if p["escalated"] else 1.0) and not p["degraded"]
        assert len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"]
    tiers = {p["tier"] for p in predictions}
    assert tiers == {"student", "teacher"}, "the mix must exercise both tiers"
    escalated_texts = [t for t, p in zip(IN_DOMAIN + ODD, predictions) if p["escalated"]]
    assert body["logged"] == len(escalated_texts)
    new = [r for r in read_records(cascade_config.paths().escalations) if r.id not in before]
    assert sorted(r.text for r in new) == sorted(escalated_texts)
    by_text = {t: p for t, p in zip(IN_DOMAIN + ODD, predictions)}
    for record in new:
        assert record.request_id == body["request_id"]
        assert len(record.teacher_probs) == 5 and abs(sum(record.teacher_probs) - 1) < 1e-4
        assert record.teacher_label == by_text[record.text]["label"]
        assert record.teacher_version == body["versions"]["teacher"]
        assert np.argmax(record.teacher_probs) == ["alarm", "balance", "music", "transfer", "weather"].index(record.teacher_label)


def test_modes_are_honoured(cascade_url):
    teacher = classify(cascade_url, IN_DOMAIN, mode="teacher")["predictions"]
    assert all(p["tier"] == "teacher" and p["reason"] == "forced" and p["cost"] == 50.0 for p in teacher)
    body = classify(cascade_url, ODD, mode="student")
    assert all(p["tier"] == "student" and not p["escalated"] for p in body["predictions"])
    assert body["versions"]["teacher"].startswith("teacher-")  # named even when not called


def test_threshold_override_per_request(cascade_url):
    everything = classify(cascade_url, IN_DOMAIN, threshold=1.0)["predictions"]
    assert all(p["tier"] == "teacher" for p in everything)
    nothing = classify(cascade_url, ODD, threshold=0.0)["predictions"]
    assert all(p["tier"] == "student" for p in nothing)


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 422, "JSON"),
        ({"inputs": 123}, 422, "inputs"),
        ({"inputs": []}, 422, "non-empty"),
        ({"inputs": ["ok", "   "]}, 422, "inputs[1]: empty"),
        ({"inputs": "x", "options": {"mode": "oracle"}}, 422, "mode"),
        ({"inputs": "x", "options": {"threshold": 2}}, 422, "threshold"),
        ({"inputs": "x", "options": {"colour": "red"}}, 422, "colour"),
        ({"inputs": ["a"] * 65}, 413, "at most 64"),
        ({"text": "x"}, 422, "inputs"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(cascade_url, body, status, fragment):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{cascade_url}/v1/classify", timeout=30, **kwargs)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_hot_swap_under_load_fails_no_request(cascade_url, cascade_config):
    """A promotion and its rollback reach the running student under load, and no request fails.
    The pointer is put back in a ``finally``: whatever happens here, the tests after this one
    (this module's copy of the home is the session's cascade's) see the student they started with."""
    import threading

    from distill.registry import Registry

    registry = Registry(cascade_config.home / "registry")
    old = registry.current("student")
    new = registry.derive("student", old).version
    answered, failures = [], []  # the student version of every 200, in the order received; other statuses
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{cascade_url}/v1/classify", json={"inputs": IN_DOMAIN + ODD})
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    answered.append(response.json()["versions"]["student"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(answered) >= 20, 60, f"20 answers of the load from {old}")
        try:
            registry.promote("student", new, note="hot swap test", expected_current=old)
            wait_until(lambda: new in answered, 30, f"the promoted {new} to answer the load (poll_registry_s 0.5)")
            assert registry.rollback("student") == old
            rolled_back_at = len(answered)
            wait_until(lambda: answered[rolled_back_at:].count(old) >= 8, 30, f"the rolled-back {old} to answer the load again")
        finally:
            if registry.current("student") != old:  # put back, whatever failed above
                registry.promote("student", old, note="hot swap test: put back")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [], failures  # and both versions answered the load: the waits above saw them
    assert classify(cascade_url, "play some jazz")["versions"]["student"] == old  # rolled back


def test_feedback_is_off_with_403_when_no_token_is_set(cascade_url):
    """This session's cascade starts without $CASCADE_FEEDBACK_TOKEN: feedback would become
    training data, so it is off, and the answer says how to turn it on."""
    answer = classify(cascade_url, "play some jazz")
    response = httpx.post(f"{cascade_url}/v1/feedback", timeout=30, headers={"Authorization": "Bearer anything"},
                          json={"items": [{"request_id": answer["request_id"], "index": 0, "label": "x"}]})
    assert response.status_code == 403 and "CASCADE_FEEDBACK_TOKEN" in response.json()["error"]
