"""Teacher faults in ``Cascade`` without Ray: a timeout, a failing teacher that opens the
circuit breaker, a half-open probe that closes it, and the bounded teacher queue. Unsure items
always get the student's answer, degraded with the cause; nothing raises."""

from __future__ import annotations

import asyncio

import numpy as np

from router import CircuitBreaker, CostModel
from serving.api import ClassifyOptions
from serving.cascade import Cascade, ModelOutput

LABELS = ["a", "b", "c"]


async def unsure_student(texts):
    return ModelOutput(np.tile([0.5, 0.3, 0.2], (len(texts), 1)), "student-v1", {"threshold": 0.7})


class Teacher:
    """A teacher whose behaviour the test switches: answer, fail, or hang."""

    def __init__(self):
        self.mode = "answer"
        self.calls = 0

    async def __call__(self, texts):
        self.calls += 1
        if self.mode == "fail":
            raise ConnectionError("replica died")
        if self.mode == "hang":
            await asyncio.sleep(10)
        return ModelOutput(np.tile([0.1, 0.8, 0.1], (len(texts), 1)), "teacher-v1")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(teacher, **kwargs) -> Cascade:
    async def append(records):
        return len(records)

    return Cascade(unsure_student, teacher, append, LABELS, CostModel(1, 50), **kwargs)


def classify(cascade, texts):
    return asyncio.run(cascade.classify(texts, ClassifyOptions()))


def test_breaker_opens_after_failures_then_a_probe_closes_it():
    teacher, clock = Teacher(), Clock()
    cascade = make(teacher, breaker=CircuitBreaker(failure_threshold=3, reset_timeout_s=5, clock=clock))
    teacher.mode = "fail"
    causes = [classify(cascade, ["x"]).predictions[0].cause for _ in range(5)]
    assert causes == ["teacher_unavailable"] * 3 + ["teacher_circuit_open"] * 2
    assert teacher.calls == 3, "an open breaker must not call the teacher"
    teacher.mode = "answer"
    clock.now = 6  # past reset_timeout_s: one probe goes through and closes the breaker
    probe = classify(cascade, ["x"]).predictions[0]
    assert probe.tier == "teacher" and not probe.degraded
    assert cascade.breaker.state == "closed"
    assert cascade.degraded == {"teacher_unavailable": 3, "teacher_circuit_open": 2}


def test_timeouts_degrade_and_count_toward_the_breaker():
    teacher = Teacher()
    teacher.mode = "hang"
    cascade = make(teacher, teacher_timeout_s=0.05, breaker=CircuitBreaker(failure_threshold=2, reset_timeout_s=60))
    first = classify(cascade, ["x", "y"])
    assert [p.cause for p in first.predictions] == ["teacher_timeout"] * 2
    assert all(p.degraded and p.tier == "student" and p.label == "a" for p in first.predictions)
    assert first.logged == 0, "nothing the teacher did not answer is logged"
    classify(cascade, ["x"])
    assert cascade.breaker.state == "open"
    assert classify(cascade, ["x"]).predictions[0].cause == "teacher_circuit_open"


def test_bounded_teacher_queue_sheds_to_the_student_while_full():
    teacher = Teacher()
    teacher.mode = "hang"
    cascade = make(teacher, teacher_timeout_s=0.2, teacher_max_in_flight=4)

    async def burst():
        return await asyncio.gather(*(cascade.classify(["x", "y"], ClassifyOptions()) for _ in range(4)))

    responses = asyncio.run(burst())
    causes = sorted(p.cause for r in responses for p in r.predictions)
    # two requests (4 items) fill the queue and time out; the other two are turned away at once
    assert causes == ["teacher_overloaded"] * 4 + ["teacher_timeout"] * 4
    assert teacher.calls == 2 and cascade.teacher_in_flight == 0


def test_a_request_larger_than_the_queue_still_reaches_an_idle_teacher():
    cascade = make(Teacher(), teacher_max_in_flight=2)
    predictions = classify(cascade, ["x"] * 5).predictions
    assert all(p.tier == "teacher" for p in predictions)


def test_a_failing_log_write_fails_no_request_and_is_counted(caplog):
    async def full_disk(records):
        raise OSError(28, "No space left on device")

    cascade = Cascade(unsure_student, Teacher(), full_disk, LABELS, CostModel(1, 50))
    response = classify(cascade, ["x", "y"])
    assert response.logged == 0 and all(p.tier == "teacher" for p in response.predictions)
    assert cascade.reliability_stats()["log_write_errors"] == 1
    assert cascade.reliability_stats()["unlogged_records"] == 2
    assert any(r.levelname == "ERROR" and "No space left" in r.getMessage() for r in caplog.records)


def test_texts_are_redacted_before_they_are_logged():
    written = []

    async def append(records):
        written.extend(records)
        return len(records)

    cascade = Cascade(unsure_student, Teacher(), append, LABELS, CostModel(1, 50), redact=str.upper)
    classify(cascade, ["pay alice"])
    assert [r.text for r in written] == ["PAY ALICE"]
