"""A real Ray Serve cascade whose teacher is a black-box model over HTTP (a local fake
OpenAI-compatible endpoint), called with the official ``tritonclient`` over the Open
Inference Protocol and over ``/v1/classify``; its escalation log then trains a student
label-only through ``cascade refresh``."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from distill.backends import HFClassifier
from distill.escalations import read_records
from distill.registry import Registry
from fake_teacher import rule_label
from serving.config import CascadeConfig
from ports import free_port

pytestmark = pytest.mark.slow

MODEL = "cascade-remote"
IN_DOMAIN = ["play some jazz", "set an alarm for 7 am", "what is the weather tomorrow", "transfer 50 dollars to savings"]
ODD = ["zebra quantum pancake", "the of and a", "purple", "yes", "banana telescope"]
NOVEL = [f"{a} {b}" for a, b in zip(["violin", "granite", "orbit", "lantern", "meadow", "copper"], ["falcon", "harbor", "prism", "tundra", "velvet", "quartz"])]


@pytest.fixture(scope="module")
def remote_cascade(tiny_home, fake_teacher, tmp_path_factory):
    """The cascade with the fake endpoint as its teacher: (base URL, config)."""
    from serving.cli import runner

    fake_teacher.reset()
    config = CascadeConfig.model_validate({
        "home": str(tiny_home),
        "port": free_port(),
        "app_name": MODEL,
        "routing": {"threshold": 0.9, "audit_rate": 0.0},
        "limits": {"max_items": 64},
        "log": {"path": str(tmp_path_factory.mktemp("remote-escalations"))},
        "feedback": {"traffic_path": str(tmp_path_factory.mktemp("traffic")), "path": str(tmp_path_factory.mktemp("feedback"))},
        "teacher": {"num_cpus": 0.25, "remote": {"kind": "openai", "url": f"{fake_teacher.url}/v1", "model": "fake-llm",
                                                 "timeout_s": 3, "retries": 2, "backoff_s": 0.05, "concurrency": 4}},
    })
    url = runner.start(config, num_cpus=2)
    yield url, config
    runner.stop()


@pytest.fixture(scope="module")
def client(remote_cascade):
    return triton.InferenceServerClient(url=remote_cascade[0].removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def labels(remote_cascade) -> list[str]:
    return httpx.get(f"{remote_cascade[0]}/v1/models").json()["labels"]


def classify(url: str, texts: list[str], **options) -> dict:
    response = httpx.post(f"{url}/v1/classify", json={"inputs": texts, "options": options}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def v2_infer(client, texts: list[str], binary: bool, **parameters):
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "tier", "escalated", "score")]
    return client.infer(MODEL, [tensor], outputs=outputs, request_id="v2-test", parameters=parameters or None)


def strings(array: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in array]


def test_tritonclient_sees_a_live_ready_model_with_text_in_and_labels_out(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("bert")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"][0].startswith("student-")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert outputs.items() >= {"label": "BYTES", "score": "FP32", "tier": "BYTES", "escalated": "BOOL"}.items()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer_gives_the_labels_of_v1_classify(remote_cascade, client, binary):
    url, _ = remote_cascade
    texts = IN_DOMAIN + ODD
    v1 = classify(url, texts)["predictions"]
    result = v2_infer(client, texts, binary)
    assert strings(result.as_numpy("label")) == [p["label"] for p in v1]
    assert strings(result.as_numpy("tier")) == [p["tier"] for p in v1]
    assert result.as_numpy("escalated").tolist() == [p["escalated"] for p in v1]
    assert np.allclose(result.as_numpy("score"), [p["score"] for p in v1], atol=1e-6)
    assert {p["tier"] for p in v1} == {"student", "teacher"}, "the texts must exercise both tiers"
    response = result.get_response()
    assert response["model_name"] == MODEL and response["id"] == "v2-test"
    assert response["parameters"]["teacher_version"].startswith("remote:fake-llm@127.0.0.1")


def test_v2_parameters_choose_the_mode(client, labels):
    result = v2_infer(client, ODD, binary=False, mode="teacher")
    assert set(strings(result.as_numpy("tier"))) == {"teacher"}
    assert strings(result.as_numpy("label")) == [rule_label(t, labels) for t in ODD]
    with pytest.raises(InferenceServerException, match="parameters.mode"):
        v2_infer(client, ODD, binary=False, mode="oracle")


def test_v2_errors_name_the_problem(remote_cascade, client):
    url, _ = remote_cascade
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["hi"], dtype=object), binary_data=False)
    with pytest.raises(InferenceServerException, match="unknown model 'bert'"):
        client.infer("bert", [tensor])
    cases = [
        (f"{url}/v2/models/bert/infer", {"inputs": []}, 404, "unknown model"),
        (f"{url}/v2/models/{MODEL}/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, 400, "shape"),
        (f"{url}/v2/models/{MODEL}/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [" "]}]}, 422, "empty"),
        (f"{url}/v2/models/{MODEL}/infer", {"inputs": [{"name": "text", "shape": [65], "datatype": "BYTES", "data": ["a"] * 65}]}, 413, "at most 64"),
        (f"{url}/v2/models/{MODEL}/infer", {"input": []}, 422, "inputs"),
    ]
    for target, body, status, message in cases:
        response = httpx.post(target, json=body, timeout=30)
        assert response.status_code == status and message in response.json()["error"], (body, response.text)
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=b"{oops", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert httpx.get(f"{url}/v2/models/bert").status_code == 404


def test_escalations_are_logged_with_the_remote_teachers_label(remote_cascade, fake_teacher, labels):
    url, config = remote_cascade
    before = {r.id for r in read_records(config.paths().escalations)}
    body = classify(url, ODD + IN_DOMAIN)
    escalated = {t: p for t, p in zip(ODD + IN_DOMAIN, body["predictions"]) if p["escalated"]}
    assert escalated and body["logged"] == len(escalated)
    host = fake_teacher.url.removeprefix("http://")
    assert body["versions"]["teacher"] == f"remote:fake-llm@{host}"
    new = [r for r in read_records(config.paths().escalations) if r.id not in before]
    assert sorted(r.text for r in new) == sorted(escalated)
    for record in new:
        assert record.teacher_label == rule_label(record.text, labels) == escalated[record.text]["label"]
        assert record.teacher_label_only and record.teacher_version == f"remote:fake-llm@{host}"
        assert record.teacher_probs == [1.0 if label == record.teacher_label else 0.0 for label in labels]


def test_a_failing_remote_teacher_degrades_to_the_student_and_logs_nothing(remote_cascade, fake_teacher):
    url, config = remote_cascade
    before = len(read_records(config.paths().escalations))
    fake_teacher.script = [503] * 200  # every call fails, retries included
    try:
        body = classify(url, ODD)
    finally:
        fake_teacher.script = []
    escalated = [p for p in body["predictions"] if p["escalated"]]
    assert escalated, "odd texts are unsure"
    assert all(p["degraded"] and p["cause"] == "teacher_unavailable" and p["tier"] == "student" for p in escalated)
    assert body["logged"] == 0 and len(read_records(config.paths().escalations)) == before


def test_a_student_is_distilled_label_only_from_the_remote_teachers_log(remote_cascade, tiny_home, tiny_data, tmp_path, capsys, labels):
    from serving.cli import main

    url, config = remote_cascade
    assert classify(url, NOVEL, mode="teacher")["logged"] == len(NOVEL)  # more to learn from than the earlier tests logged
    records = [r for r in read_records(config.paths().escalations) if r.teacher_label_only]
    assert records, "the earlier tests log escalations"
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)  # refresh registers a version; the session's home stays as it was
    capsys.readouterr()
    assert main(["refresh", "--home", str(home), "--data", str(tiny_data), "--log", str(config.paths().escalations), "--epochs", "10", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["label_only_rows"] == report["data"]["escalation_rows"] > 0
    assert report["data"]["teacher_versions"] == [records[0].teacher_version]
    registry = Registry(home / "registry")
    meta = registry.meta("student", report["version"])
    assert meta.train_config["mode"] == "label-only"
    candidate = HFClassifier.load(registry.path("student", report["version"]))
    parent = HFClassifier.load(registry.path("student", report["parent"]))
    texts = sorted({r.text for r in records})
    taught = np.array([labels.index(rule_label(t, labels)) for t in texts])
    probs = candidate.predict_proba(texts)
    assert probs.shape == (len(texts), len(labels)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # it learned the teacher's labels where its parent disagreed with the teacher
    differ = parent.predict_proba(texts).argmax(1) != taught
    assert differ.sum() >= 2, "the logged texts must hold something the parent did not know"
    learned = np.mean(probs.argmax(1)[differ] == taught[differ])
    assert learned >= 0.5, f"agrees with the teacher on {learned:.0%} of the {differ.sum()} texts its parent got otherwise"
