"""Outcome feedback over the service's real FastAPI app, with plain async fakes for the models
(``test_service``): every status of ``POST /v1/feedback``, live accuracy by tier in
``/v1/stats``, feedback on a student-answered item after a restart, and the traffic log's
retention and failures; an accuracy goal held through live accuracy once feedback comes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from distill.feedback import FeedbackRecord, read_feedback
from distill.settings import Paths
from serving.feedback import RETENTION_MARGIN_S, FeedbackLedger
from serving.traffic import TrafficReader
from test_service import ConfidenceStudent, FakeModel, ThresholdTeacher, close_services, make_service  # noqa: F401  (close_services: autouse)

FEEDBACK = "fb-token"
AUTH = {"Authorization": f"Bearer {FEEDBACK}"}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def confident_student() -> FakeModel:
    return FakeModel("student-v1", [0.9, 0.05, 0.05], {"threshold": 0.7})  # label a, answered alone


def unsure_student() -> FakeModel:
    return FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.7})  # label a, escalated; the teacher says b


def classify(client, inputs, **options) -> dict:
    response = client.post("/v1/classify", json={"inputs": inputs, "options": options})
    assert response.status_code == 200, response.text
    return response.json()


def feedback(client, items, headers=AUTH):
    return client.post("/v1/feedback", json={"items": items}, headers=headers)


def test_feedback_is_off_without_a_token_and_refused_with_a_wrong_one(home):
    _, off, _ = make_service(home / "off", confident_student())
    request_id = classify(off, "x")["request_id"]
    item = [{"request_id": request_id, "index": 0, "label": "a"}]
    refused = feedback(off, item)
    assert refused.status_code == 403 and "CASCADE_FEEDBACK_TOKEN" in refused.json()["error"]
    _, on, _ = make_service(home / "on", confident_student(), feedback_token=FEEDBACK)
    request_id = classify(on, "x")["request_id"]
    item = [{"request_id": request_id, "index": 0, "label": "a"}]
    assert feedback(on, item, headers={}).status_code == 401
    wrong = feedback(on, item, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "not accepted" in wrong.json()["error"]
    assert not read_feedback(Paths.under(home / "on").feedback)  # nothing refused was written


def test_every_bad_item_is_refused_with_its_status_and_nothing_is_written(home):
    service, client, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)
    request_id = classify(client, ["x", "y"])["request_id"]
    good = {"request_id": request_id, "index": 0, "label": "a"}
    cases = [
        ([good, {"request_id": "f" * 32, "index": 0, "label": "a"}], 404, "items[1].request_id"),
        ([good, {"request_id": request_id, "index": 2, "label": "a"}], 404, "had 2 item(s), no index 2"),
        ([good, {"request_id": request_id, "index": 1, "label": "zebra"}], 422, "'zebra' is not a label"),
        ([good] * (service.config.feedback.max_items + 1), 413, "at most 1000"),
        ([], 422, "at least one"),
        ([{"request_id": request_id, "index": -1, "label": "a"}], 422, "index"),
        ([{"request_id": request_id, "index": "0", "label": "a"}], 422, "index"),
        ([{"request_id": request_id, "label": "a"}], 422, "index"),
        ([{**good, "extra": 1}], 422, "extra"),
    ]
    for items, status, fragment in cases:
        response = feedback(client, items)
        assert response.status_code == status and fragment in response.json()["error"], (items, response.text)
    not_json = client.post("/v1/feedback", content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert not_json.status_code == 422
    assert not read_feedback(Paths.under(home).feedback)


def test_live_accuracy_by_tier_counts_each_items_latest_label(home):
    student = FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.55})
    service, client, _ = make_service(home, student, feedback_token=FEEDBACK)
    confident = classify(client, ["x", "y"], threshold=0.4)  # student answers a, alone
    unsure = classify(client, "z")  # the teacher answers b
    assert [p["tier"] for p in confident["predictions"] + unsure["predictions"]] == ["student", "student", "teacher"]
    items = [{"request_id": confident["request_id"], "index": 0, "label": "a"},
             {"request_id": confident["request_id"], "index": 1, "label": "c"},
             {"request_id": unsure["request_id"], "index": 0, "label": "b"}]
    assert feedback(client, items).json() == {"recorded": 3, "changed": 0, "unchanged": 0}
    assert feedback(client, items).json() == {"recorded": 0, "changed": 0, "unchanged": 3}  # a repeat writes nothing
    stats = client.get("/v1/stats").json()["feedback"]
    assert (stats["student"]["items"], stats["student"]["correct"]) == (2, 1)
    assert (stats["teacher"]["items"], stats["teacher"]["correct"]) == (1, 1)
    # on the escalated item both models labelled: the student said a, the teacher b, truly b
    assert stats["both"]["student"]["correct"] == 0 and stats["both"]["teacher"]["correct"] == 1
    changed = feedback(client, [{"request_id": confident["request_id"], "index": 1, "label": "a"}]).json()
    assert changed == {"recorded": 1, "changed": 1, "unchanged": 0}
    stats = client.get("/v1/stats").json()["feedback"]
    assert (stats["student"]["items"], stats["student"]["correct"]) == (2, 2)
    history = [json.loads(line) for segment in sorted(Paths.under(home).feedback.glob("segment-*.jsonl")) for line in segment.read_text().splitlines()]
    assert [(r["index"], r["label"], r["replaces"]) for r in history if r["request_id"] == confident["request_id"]] == [
        (0, "a", None), (1, "c", None), (1, "a", "c")]  # the changed label is a new record; the old one stays
    record = read_feedback(Paths.under(home).feedback)[(unsure["request_id"], 0)]
    assert (record.text, record.tier, record.answered, record.student_label, record.teacher_label) == ("z", "teacher", "b", "a", "b")


def test_feedback_reaches_a_student_answered_item_after_a_restart_and_from_another_replica(home):
    _, first, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)
    answered = classify(first, ["my card", "a refund"], evaluation=True)
    _, second, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)  # a restart: a new replica, new traffic file
    response = feedback(second, [{"request_id": answered["request_id"], "index": 1, "label": "c"}])
    assert response.status_code == 200 and response.json()["recorded"] == 1
    record = read_feedback(Paths.under(home).feedback)[(answered["request_id"], 1)]
    assert (record.text, record.tier, record.evaluation, record.correct) == ("a refund", "student", True, False)
    assert first.get("/v1/stats").json()["feedback"]["student"]["items"] == 1  # every replica counts every replica's feedback


def test_a_failed_traffic_write_answers_the_request_and_its_feedback_is_404(home):
    service, client, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)
    classify(client, "x")
    service.stores.traffic.close()  # every later commit fails
    answered = classify(client, "y")
    assert client.get("/v1/stats").json()["reliability"]["traffic_write_errors"] == 1
    assert feedback(client, [{"request_id": answered["request_id"], "index": 0, "label": "a"}]).status_code == 404


def test_without_the_traffic_log_new_answers_cannot_get_feedback_and_the_404_says_why(home):
    service, client, _ = make_service(home, confident_student(), feedback_token=FEEDBACK, feedback={"keep_traffic": False})
    answered = classify(client, "x")
    response = feedback(client, [{"request_id": answered["request_id"], "index": 0, "label": "a"}])
    assert response.status_code == 404 and "feedback.keep_traffic is false" in response.json()["error"]
    assert not service.config.paths().traffic.exists(), "nothing kept"


def test_kept_requests_past_retention_are_purged_and_not_found(home):
    service, client, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)
    request_id = classify(client, "x")["request_id"]
    reader = TrafficReader(service.config.paths().traffic, retention_s=3600)
    assert request_id in reader.find([request_id])
    assert request_id not in TrafficReader(service.config.paths().traffic, retention_s=0).find([request_id])
    service.stores.traffic.purge(now=time.time() + 2 * service.stores.traffic.retention_s)
    assert reader.find([request_id]) == {}  # a writer deletes its own rows past retention
    later, _, _ = make_service(home, confident_student(), feedback_token=FEEDBACK)  # another replica, long after
    later.stores.traffic.purge(now=time.time() + 2 * later.stores.traffic.retention_s)
    assert service.stores.traffic.path.exists(), "a live writer's file stays, however long it has been idle"
    service.close()
    later.stores.traffic.purge(now=time.time() + 2 * later.stores.traffic.retention_s)
    assert not service.stores.traffic.path.exists()  # a gone writer's file goes once all of it is past retention


@pytest.mark.parametrize("with_feedback", [False, True])
def test_an_accuracy_goal_is_held_through_live_accuracy_once_feedback_comes(home, with_feedback):
    from serving.api import ClassifyOptions
    from serving.feedback import FeedbackItem

    # the true label is always "a": the student (always "a") is right everywhere, the teacher ("b" below 0.5) is not
    policy = {"threshold": 0.9, "goal": "accuracy>=teacher", "validation": {"teacher_agreement": 0.98}}
    service, http, _ = make_service(home, student=ConfidenceStudent("student-v1", [1, 0, 0], policy),
                                    teacher=ThresholdTeacher("teacher-v1", [1, 0, 0]), goal="accuracy>=teacher", audit_rate=0.2)
    rng = np.random.default_rng(0)

    async def serve(rounds: int) -> None:
        for _ in range(rounds):
            texts = [f"{c:.3f}" for c in rng.uniform(0.34, 1.0, 50)]
            answer = await service.classify(texts, ClassifyOptions())
            if with_feedback:
                await service.feedback([FeedbackItem(request_id=answer.request_id, index=i, label="a") for i in range(50)])
            await asyncio.to_thread(service.live.sync)

    asyncio.run(serve(120))
    live = http.get("/v1/models").json()["live"]
    if with_feedback:  # the student is the more accurate model: control lets it answer what the teacher would get wrong
        assert live["through"] == "accuracy" and live["feedback_items"] == 6000, live
        assert live["threshold"] <= 0.34 and live["held"] and live["bound"] >= live["target"], live
        assert live["target"] == pytest.approx(1 - 0.16 / 0.66, abs=0.03), "the teacher's own accuracy on the traffic"
    else:  # without feedback, held through agreement with the teacher: its disagreements below 0.5 go to it
        assert live["through"] == "agreement" and live["feedback_items"] == 0 and live["threshold"] >= 0.45, live


def record(request_id: str, label: str, at: float, confidence: float = 0.9, version: str = "student-v1") -> FeedbackRecord:
    """Feedback on item 0 of a request the student answered "a" alone."""
    return FeedbackRecord(request_id=request_id, index=0, label=label, time=at, text="t", tier="student", answered="a",
                          student_label="a", teacher_label=None, student_version=version, teacher_version=None,
                          confidence=confidence)


def test_the_ledger_keeps_each_items_outcome_in_one_row_that_a_changed_label_rewrites(tmp_path):
    """Live control's outcomes per student version: one row per item, past the arrays' first
    capacity; a newer label rewrites the item's row, an older one is ignored."""
    ledger = FeedbackLedger(tmp_path / "feedback")
    for i in range(3000):
        ledger._apply(record(f"{i:x}", "a" if i % 3 else "b", 1.0, confidence=i / 3000))
    ledger._apply(record("ff0000", "b", 1.0, version="student-v2"))
    confidence, student_wrong, teacher_wrong = ledger.outcomes("student-v1")
    assert len(confidence) == 3000 and student_wrong.sum() == 1000 and np.isnan(teacher_wrong).all()
    assert confidence[1] == pytest.approx(1 / 3000)
    ledger._apply(record("0", "a", 2.0, confidence=0.0))  # item 0 was "b" (student wrong): now right, same row
    ledger._apply(record("1", "b", 0.5))  # older than item 1's latest: ignored
    confidence, student_wrong, _ = ledger.outcomes("student-v1")
    assert len(confidence) == 3000 and student_wrong.sum() == 999 and not student_wrong[0] and not student_wrong[1]
    assert [len(column) for column in ledger.outcomes("student-v2")] == [1, 1, 1]
    figures = ledger.figures()["student"]
    assert (figures["items"], figures["correct"]) == (3001, 2001)  # 2,000 right at first, item 0 now too; the v2 item wrong


def test_the_ledger_forgets_items_past_retention_and_keeps_their_counts(tmp_path):
    """No feedback is taken on an item answered past the traffic log's retention, so the ledger
    drops its entry (memory stays bounded by the window); its counts and outcome stay."""
    ledger = FeedbackLedger(tmp_path / "feedback", retention_s=60)
    now = time.time()
    ledger._apply(record("a1", "b", now - 60 - RETENTION_MARGIN_S - 10))
    ledger._apply(record("a2", "b", now - 60 - RETENTION_MARGIN_S + 10))  # within the margin: kept
    ledger._apply(record("a3", "a", now - 30))
    ledger._apply(record("a2", "a", now - 20))  # a changed label: a2's entry moves behind a3's
    ledger.sync()
    assert list(ledger.latest) == [("a3", 0), ("a2", 0)]
    assert ledger.figures()["student"]["items"] == 3 and ledger.figures()["student"]["correct"] == 2
    assert ledger.outcomes("student-v1")[1].tolist() == [True, False, False]
