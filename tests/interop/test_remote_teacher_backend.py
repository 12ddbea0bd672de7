"""The black-box HTTP teacher against a local fake endpoint: answers mapped to labels,
retries with backoff, the concurrency limit, timeouts, and its configuration."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from fake_teacher import rule_label
from waiting import wait_until
from distill.errors import ModelError
from serving.remote import RemoteClassifier, RemoteTeacherError, RemoteTeacherSettings, parse_label
from distill.registry import Registry
from serving.config import ConfigError, load_config

LABELS = ["alarm", "balance", "music", "transfer", "weather"]
TEXTS = ["play some jazz music", "set an alarm for 7 am", "zebra quantum pancake", "is it weather time", "purple"]


def teacher(fake, sleeps: list | None = None, **overrides) -> RemoteClassifier:
    fake.reset()
    settings = {"kind": "openai", "url": f"{fake.url}/v1", "model": "fake-llm", "timeout_s": 2.0, "retries": 2, "backoff_s": 0.1} | overrides
    if settings["kind"] == "json":
        settings = settings | {"url": f"{fake.url}/probabilities", "model": None}
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return RemoteClassifier(RemoteTeacherSettings.model_validate(settings), LABELS, sleep=record)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("music", "music"),
        ("Music.", "music"),
        ("`weather`", "weather"),
        ("Label: transfer", "transfer"),
        ("The answer is: alarm", "alarm"),
        ("I would say balance here.", "balance"),
        ("alarm or music", None),  # names two labels
        ("gibberish", None),
        ("", None),
    ],
)
def test_answers_are_mapped_to_one_label_or_refused(answer, expected):
    assert parse_label(answer, LABELS) == expected


def test_labels_with_separators_and_overlaps_parse():
    labels = ["card", "card_arrival", "exchange-rate"]
    assert parse_label("card arrival", labels) == "card_arrival"  # spaces for underscores
    assert parse_label("It is about my card arrival", labels) == "card_arrival"  # the longer label wins over "card"
    assert parse_label("EXCHANGE RATE", labels) == "exchange-rate"
    assert parse_label("card", labels) == "card"
    assert parse_label("Überweisung.", ["kontostand", "überweisung"]) == "überweisung"  # labels in any language
    assert parse_label("天気", ["天気", "音楽"]) == "天気"


def test_openai_teacher_gives_one_hot_rows_from_the_endpoints_answers(fake_teacher):
    model = teacher(fake_teacher)
    probs = model.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), len(LABELS)) and probs.dtype == np.float32
    assert np.array_equal(probs.sum(1), np.ones(len(TEXTS))) and set(np.unique(probs)) == {0.0, 1.0}
    assert [LABELS[i] for i in probs.argmax(1)] == [rule_label(t, LABELS) for t in TEXTS]
    assert model.label_only and model.version == f"remote:fake-llm@{fake_teacher.url.removeprefix('http://')}"
    call = fake_teacher.calls[0]
    assert call.path == "/v1/chat/completions" and call.body["model"] == "fake-llm" and call.body["temperature"] == 0
    assert all(label in call.body["messages"][0]["content"] for label in LABELS)
    assert sorted(c.body["messages"][1]["content"] for c in fake_teacher.calls) == sorted(TEXTS)  # one call per text
    assert model.predict_proba([]).shape == (0, len(LABELS))


def test_server_errors_are_retried_with_exponential_backoff(fake_teacher):
    sleeps: list[float] = []
    model = teacher(fake_teacher, sleeps, retries=3, backoff_s=0.1)
    fake_teacher.script = [500, 503]
    assert LABELS[model.predict_proba(["play music"]).argmax()] == "music"
    assert len(fake_teacher.calls) == 3
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.125 and 0.2 <= sleeps[1] <= 0.25


def test_rate_limits_are_retried_and_the_budget_ends_in_a_clear_error(fake_teacher):
    sleeps: list[float] = []
    model = teacher(fake_teacher, sleeps, retries=2)
    fake_teacher.script = [429, 500, 502]
    with pytest.raises(RemoteTeacherError, match=r"after 3 attempt\(s\)"):
        model.predict_proba(["play music"])
    assert len(fake_teacher.calls) == 3 and len(sleeps) == 2


def test_client_errors_are_not_retried(fake_teacher):
    model = teacher(fake_teacher)
    fake_teacher.script = [401]
    with pytest.raises(RemoteTeacherError, match="HTTP 401"):
        model.predict_proba(["play music"])
    assert len(fake_teacher.calls) == 1


def test_a_slow_endpoint_times_out_and_is_retried(fake_teacher):
    model = teacher(fake_teacher, timeout_s=0.3, retries=1)
    fake_teacher.script = [("sleep", 2.0), ("sleep", 2.0)]
    started = time.monotonic()
    with pytest.raises(RemoteTeacherError, match="Timeout"):
        model.predict_proba(["play music"])
    assert time.monotonic() - started < 1.5  # two 0.3 s timeouts and one short backoff, not two 2 s answers
    assert len(fake_teacher.calls) == 2


def test_an_answer_naming_no_label_is_asked_again_with_a_correction(fake_teacher):
    model = teacher(fake_teacher, retries=1)
    fake_teacher.script = [("answer", "I cannot tell")]
    assert LABELS[model.predict_proba(["play music"]).argmax()] == "music"
    second = fake_teacher.calls[1].body["messages"]
    assert second[2] == {"role": "assistant", "content": "I cannot tell"} and "not one of the labels" in second[3]["content"]
    fake_teacher.reset()
    fake_teacher.script = [("answer", "no idea"), ("answer", "still no idea")]
    with pytest.raises(RemoteTeacherError, match="names none"):
        model.predict_proba(["play music"])


def test_no_more_calls_in_flight_than_the_concurrency_limit(fake_teacher):
    model = teacher(fake_teacher, concurrency=3)
    fake_teacher.delay_s = 0.15
    started = time.monotonic()
    model.predict_proba([f"text number {i}" for i in range(12)])
    assert fake_teacher.max_in_flight == 3
    assert time.monotonic() - started >= 4 * 0.15  # 12 calls, 3 at a time


def test_json_teacher_returns_the_endpoints_probabilities(fake_teacher, monkeypatch):
    monkeypatch.setenv("FAKE_TEACHER_KEY", "s3cret")
    model = teacher(fake_teacher, kind="json", api_key_env="FAKE_TEACHER_KEY")
    fake_teacher.script = [503]
    probs = model.predict_proba(TEXTS)
    assert not model.label_only and model.version.startswith("remote:json@127.0.0.1")
    assert np.allclose(probs.sum(1), 1) and probs.max() == pytest.approx(0.7)
    assert [LABELS[i] for i in probs.argmax(1)] == [rule_label(t, LABELS) for t in TEXTS]
    assert len(fake_teacher.calls) == 2  # one batched call, after one retried 503
    assert fake_teacher.calls[-1].body == {"texts": TEXTS, "labels": LABELS}
    assert fake_teacher.calls[-1].headers["Authorization"] == "Bearer s3cret"


def test_a_named_but_unset_api_key_variable_is_an_error(fake_teacher, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ModelError, match="NO_SUCH_KEY_VAR"):
        teacher(fake_teacher, api_key_env="NO_SUCH_KEY_VAR")


def test_settings_are_checked():
    with pytest.raises(ValidationError, match="needs `model`"):
        RemoteTeacherSettings(kind="openai", url="http://x/v1")
    with pytest.raises(ValidationError, match="concurrency"):
        RemoteTeacherSettings(kind="json", url="http://x", concurrency=0)


def test_serving_config_takes_a_remote_teacher(tmp_path):
    remote = {"kind": "openai", "url": "http://llm:8000/v1", "model": "m", "api_key_env": "LLM_KEY", "retries": 5}
    config = load_config(None, teacher={"remote": remote})
    assert config.teacher.remote.retries == 5 and config.teacher.remote.version() == "remote:m@llm:8000"
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, teacher={"remote": remote, "model": "some-version"})
    with pytest.raises(ConfigError, match=r"teacher.remote.timeout_s \(8.0\) must be below routing.teacher_timeout_s \(5.0\)"):
        load_config(None, teacher={"remote": remote | {"timeout_s": 8}})
    with pytest.raises(ConfigError, match="teacher.remote.kind"):
        load_config(None, teacher={"remote": remote | {"kind": "grpc"}})


def test_close_waits_for_the_call_in_progress_then_releases_the_client(fake_teacher):
    import threading

    model = teacher(fake_teacher, kind="json")
    fake_teacher.delay_s = 0.3
    answered = []
    call = threading.Thread(target=lambda: answered.append(model.predict_proba(TEXTS)))
    call.start()
    wait_until(lambda: fake_teacher.in_flight, 10, "the call to reach the fake teacher", every_s=0.01)
    model.close()
    assert model.closed and not model._http.is_closed  # the batch in progress still has its connection
    with pytest.raises(RemoteTeacherError, match="closed"):
        model.predict_proba(TEXTS)  # no new calls
    call.join(5)
    assert len(answered) == 1 and answered[0].shape == (len(TEXTS), len(LABELS))
    assert model._http.is_closed


def test_a_swap_away_from_a_remote_teacher_closes_its_client(fake_teacher, tiny_home):
    from serving.config import CascadeConfig
    from serving.model_server import BatchedModel

    fake_teacher.reset()
    server = BatchedModel("teacher", CascadeConfig(home=tiny_home).paths())
    remote = {"kind": "json", "url": f"{fake_teacher.url}/probabilities", "labels": LABELS}
    server.configure({"model": None, "remote": remote})
    first = server.model
    server.configure({"model": None, "remote": remote | {"timeout_s": 3.0}})  # another remote teacher
    second = server.model
    assert first is not second and first._http.is_closed and not second._http.is_closed
    server.configure({"model": None, "remote": None, "poll_registry_s": 0})  # back to the registry's teacher
    assert second._http.is_closed and server.model.version == Registry(tiny_home / "registry").current("teacher")
