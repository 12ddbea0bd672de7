"""The Open Inference Protocol layer alone: request bodies encoded by the official
``tritonclient`` (JSON and binary tensor data) parsed into texts and options, answers encoded
as V2 outputs that ``tritonclient`` decodes, and malformed requests refused with the problem named."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tritonclient.http as triton

from serving import kserve
from serving.api import ClassifyResponse, ModelVersions, Prediction

TEXTS = ["play some jazz", "set an alarm for 7 am", "zebra quantum pancake"]


def text_input(texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


def encoded(texts: list[str], binary: bool, outputs=None, parameters=None) -> tuple[bytes, str | None]:
    """A request body exactly as ``tritonclient`` sends it, and its header-length field."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [text_input(texts, binary)], outputs=outputs, request_id="req-1", parameters=parameters
    )
    return body, (str(json_size) if json_size is not None else None)


def answer(n: int) -> ClassifyResponse:
    predictions = [
        Prediction(label=f"label{i}", score=0.5 + i / 10, tier="teacher" if i % 2 else "student", escalated=bool(i % 2), consulted=bool(i % 2),
                   degraded=False, cause=None, reason="unsure" if i % 2 else "confident", confidence=None if i == 0 else 0.4,
                   cost=51.0 if i % 2 else 1.0)
        for i in range(n)
    ]
    return ClassifyResponse(request_id="abc", predictions=predictions, versions=ModelVersions(student="s-1", teacher="t-1"),
                            logged=1, cost=sum(p.cost for p in predictions))


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_bodies_parse_to_texts_and_options(binary):
    body, length = encoded(TEXTS, binary, parameters={"mode": "student", "threshold": 0.3})
    assert (length is not None) == binary  # the binary extension announces its JSON header's length
    call = kserve.parse_infer(body, length)
    assert call.texts == TEXTS and call.request.id == "req-1"
    assert call.options.mode == "student" and call.options.threshold == 0.3
    assert call.outputs == {name: True for name in kserve.OUTPUTS}  # tritonclient asks for binary outputs by default


def test_non_ascii_texts_survive_both_encodings():
    texts = ["überweisung von 50 €", "天気はどう", ""]
    for binary in (False, True):
        assert kserve.parse_infer(*encoded(texts, binary)).texts == texts


def test_requested_outputs_choose_tensors_and_their_encoding():
    outputs = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("score", binary_data=True)]
    call = kserve.parse_infer(*encoded(TEXTS, False, outputs=outputs))
    assert call.outputs == {"label": False, "score": True}


@pytest.mark.parametrize("binary", [False, True])
def test_answers_decode_with_tritonclient(binary):
    outputs = None if binary else [triton.InferRequestedOutput(name, binary_data=False) for name in kserve.OUTPUTS]
    call = kserve.parse_infer(*encoded(TEXTS, False, outputs=outputs))
    response = kserve.infer_response("cascade", call, answer(len(TEXTS)))
    length = response.headers.get(kserve.HEADER_LENGTH)
    assert (length is not None) == binary
    result = triton.InferenceServerClient.parse_response_body(response.body, header_length=int(length) if length else None)
    assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == ["label0", "label1", "label2"]
    assert result.as_numpy("score").dtype == np.float32 and np.allclose(result.as_numpy("score"), [0.5, 0.6, 0.7])
    assert result.as_numpy("escalated").tolist() == [False, True, False]
    confidence = result.as_numpy("confidence")
    assert math.isnan(confidence[0]) and confidence[1] == pytest.approx(0.4)
    meta = result.get_response()
    assert meta["model_name"] == "cascade" and meta["model_version"] == "s-1" and meta["id"] == "req-1"
    assert meta["parameters"]["teacher_version"] == "t-1" and meta["parameters"]["logged"] == 1


def test_json_answers_are_valid_json_with_null_for_a_missing_confidence():
    call = kserve.parse_infer(request_body(inputs=[{"name": "text", "shape": [3], "datatype": "BYTES", "data": TEXTS}]), None)
    body = json.loads(kserve.infer_response("cascade", call, answer(len(TEXTS))).body)  # strict JSON: no NaN
    confidence = next(o for o in body["outputs"] if o["name"] == "confidence")
    assert confidence == {"name": "confidence", "shape": [3], "datatype": "FP32", "data": [None, 0.4, 0.4]}


def request_body(**changes) -> bytes:
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "body, length, status, message",
    [
        (b"{not json", None, 400, "not valid JSON"),
        (json.dumps({"id": "x"}).encode(), None, 422, "inputs: Field required"),
        (request_body(inputs=[]), None, 400, "expected one tensor"),
        (request_body(inputs=[{"name": "input_ids", "shape": [1], "datatype": "INT64", "data": [1]}]), None, 400, "expected the input 'text' of datatype BYTES"),
        (request_body(inputs=[{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]), None, 400, r"shape \[3\] holds 3 element\(s\), the data has 2"),
        (request_body(inputs=[{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 7]}]), None, 400, "must be strings"),
        (request_body(inputs=[{"name": "text", "shape": [2], "datatype": "BYTES"}]), None, 400, "data: missing"),
        (request_body(parameters={"mode": "oracle"}), None, 422, "parameters.mode"),
        (request_body(parameters={"threshold": "high"}), None, 422, "parameters.threshold"),
        (request_body(outputs=[{"name": "logits"}]), None, 400, "unknown output 'logits'"),
        (request_body(), "nine", 400, "expected a byte count"),
        (request_body(), "100000", 400, "not within the body"),
    ],
)
def test_malformed_requests_are_refused_naming_the_problem(body, length, status, message):
    with pytest.raises(kserve.V2Error, match=message) as caught:
        kserve.parse_infer(body, length)
    assert caught.value.status == status
    response = caught.value.response()
    assert response.status_code == status and "error" in json.loads(response.body)


def test_truncated_binary_data_is_refused():
    body, length = encoded(TEXTS, True)
    with pytest.raises(kserve.V2Error, match="binary_data_size"):
        kserve.parse_infer(body[:-3], length)
    header = json.loads(body[: int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] -= 3  # the size agrees, the elements do not
    head = json.dumps(header).encode()
    with pytest.raises(kserve.V2Error, match="runs past"):
        kserve.parse_infer(head + body[int(length) : -3], str(len(head)))


def test_unknown_model_is_a_404_and_metadata_describes_the_tensors():
    with pytest.raises(kserve.V2Error, match="unknown model 'bert'") as caught:
        kserve.check_model("cascade", "bert")
    assert caught.value.status == 404
    meta = kserve.model_metadata("cascade", "student-1")
    assert meta.inputs[0].model_dump() == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    assert {o.name: o.datatype for o in meta.outputs}["label"] == "BYTES" and meta.versions == ["student-1"]
