"""The HTTP edge of the API without Ray: the real FastAPI app (``serving.http.build_api``) over
the Ray-free ``CascadeService`` with fake models (``tests/service_fakes.py``). Every status the
API answers, each as ``{"error": message}`` naming the problem; hostile bodies (nested 50,000
levels deep, every JSON type where a text or a number belongs, at and one byte past the body
cap, not UTF-8, empty, the wrong content type) on every route that takes a body; and Hypothesis
fuzzing of the bodies. Nothing here starts Ray: the file runs in seconds.
``tests/reliability/test_edges_http.py`` keeps what needs Ray Serve's proxy and replicas."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distill.feedback import read_feedback
from distill.metadata import ModelMeta
from distill.registry import Registry
from serving.errors import ServingError
from serving.service import CascadeService
from service_fakes import ADMIN, TOKEN, FakeModel, close_services, make_service  # noqa: F401  (close_services: autouse)

MAX_BODY = 128 * 1024  # above DEEP's 100 KB
LIMITS = {"max_items": 64, "max_text_chars": 2000}
FEEDBACK_TOKEN = "test-feedback-token-3"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
JSON = {"content-type": "application/json"}
VERSIONS = ("student-a", "student-b")  # registered in every edge's registry; the first is current
DEEP = 50_000  # levels of arrays: 100 KB of brackets, under every size limit (objects: a fifth as deep, about as large)

# every status the API answers: the framework's, the guard's (serving.guards), the services' errors
# (serving.errors, serving.kserve.V2Error) and the content-type check (serving.http)
API_STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503}


@dataclass
class Edge:
    service: CascadeService
    client: TestClient
    registry: Registry
    request_id: str  # a /v1/classify answer with two items, which feedback can name

    def post(self, path: str, body: Any = None, content: Any = None, headers: dict | None = None) -> httpx.Response:
        """POST ``body`` as JSON (or ``content`` as it is) with the credentials the path needs."""
        if content is None and body is not None:
            content = json.dumps(body).encode()
        return self.client.post(path, content=content, headers={**JSON, **credentials(path), **(headers or {})})


def credentials(path: str) -> dict[str, str]:
    return FEEDBACK if path == "/v1/feedback" else ADMIN if path.startswith("/v1/admin") else {}


def registered(home: Path, *versions: str) -> Registry:
    """A registry holding student ``versions`` (metadata only: the fakes answer, not these), the first current."""
    registry = Registry(home / "registry")
    for version in versions:
        with registry.stage("student") as staged:
            registry.register(staged, ModelMeta(version=version, role="student", kind="bow-student"))
    registry.promote("student", versions[0])
    return registry


def make_edge(home: Path, **kwargs) -> Edge:
    """A service at ``MAX_BODY`` and ``LIMITS`` with feedback on and a fixed threshold of 0.9 (the
    default fake student's 0.5 is unsure: the teacher answers "b"), over a registry of two students."""
    registry = registered(home, *VERSIONS)
    kwargs = {"feedback_token": FEEDBACK_TOKEN, "limits": LIMITS, "max_body_bytes": MAX_BODY, "threshold": 0.9, **kwargs}
    service, client, _ = make_service(home, **kwargs)
    answer = client.post("/v1/classify", json={"inputs": ["x", "y"]})
    assert answer.status_code == 200, answer.text
    return Edge(service, client, registry, answer.json()["request_id"])


@pytest.fixture
def edge(tmp_path) -> Edge:
    return make_edge(tmp_path / "home")


def assert_error(response: httpx.Response, status: int | set[int], fragment: str = "") -> str:
    """The answer is ``{"error": message}`` with ``status`` (or one of them) and ``fragment`` in the message."""
    assert response.headers["content-type"].startswith("application/json"), (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert response.status_code in ({status} if isinstance(status, int) else status), (response.status_code, body)
    assert fragment in body["error"], (fragment, body)
    return body["error"]


# ---- every status the API answers


def v2(*texts: str, **extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}], **extra}


# (method, path, body, headers, status, fragment); ``rid`` in a body is the edge's request_id
STATUS_CASES: dict[str, tuple[str, str, Any, dict, int, str]] = {
    "400 body not UTF-8": ("POST", "/v1/classify", b'{"inputs": "caf\xe9 au lait"}', {}, 400, "not valid UTF-8 at byte offset 15"),
    "400 v2 shape": ("POST", "/v2/models/cascade/infer", {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
                     {}, 400, "holds 3 element(s), the data has 1"),
    "400 v2 two inputs": ("POST", "/v2/models/cascade/infer", {"inputs": v2("a")["inputs"] * 2}, {}, 400, "expected one tensor"),
    "400 v2 header length": ("POST", "/v2/models/cascade/infer", v2("a"), {"Inference-Header-Content-Length": "nine"}, 400, "byte count"),
    "400 v2 unknown output": ("POST", "/v2/models/cascade/infer", v2("a", outputs=[{"name": "logits"}]), {}, 400, "unknown output 'logits'"),
    "401 admin without token": ("POST", "/v1/admin/threshold", {"threshold": 0.5}, {"Authorization": ""}, 401, "send the header"),
    "401 admin wrong token": ("POST", "/v1/admin/reload", None, {"Authorization": "Bearer wrong"}, 401, "token not accepted"),
    "401 feedback wrong token": ("POST", "/v1/feedback", {"items": []}, {"Authorization": "Bearer wrong"}, 401, "feedback: token not accepted"),
    "404 unknown path": ("GET", "/v1/nothing-here", None, {}, 404, "Not Found"),
    "404 unknown path POST": ("POST", "/v1/nothing-here", {"inputs": "x"}, {}, 404, "Not Found"),
    "404 v2 unknown model": ("GET", "/v2/models/bert", None, {}, 404, "unknown model 'bert'"),
    "404 v2 unknown model ready": ("GET", "/v2/models/bert/ready", None, {}, 404, "unknown model 'bert'"),
    "404 v2 unknown model infer": ("POST", "/v2/models/bert/infer", v2("a"), {}, 404, "unknown model 'bert'"),
    "404 feedback unknown request": ("POST", "/v1/feedback", {"items": [{"request_id": "0" * 32, "index": 0, "label": "a"}]}, {}, 404,
                                     "not a kept request"),
    "404 feedback index past the end": ("POST", "/v1/feedback", {"items": [{"request_id": "rid", "index": 2, "label": "a"}]}, {}, 404,
                                        "no index 2"),
    "405 GET classify": ("GET", "/v1/classify", None, {}, 405, "Method Not Allowed"),
    "405 PUT admin": ("PUT", "/v1/admin/promote", {"version": "student-b"}, {}, 405, "Method Not Allowed"),
    "405 DELETE feedback": ("DELETE", "/v1/feedback", None, {}, 405, "Method Not Allowed"),
    "405 GET v2 infer": ("GET", "/v2/models/cascade/infer", None, {}, 405, "Method Not Allowed"),
    "405 POST healthz": ("POST", "/healthz", None, {}, 405, "Method Not Allowed"),
    "409 promote unregistered": ("POST", "/v1/admin/promote", {"version": "student-nope"}, {}, 409, "student-nope"),
    "409 promote moved meanwhile": ("POST", "/v1/admin/promote", {"version": "student-b", "expected_current": "student-b"}, {}, 409,
                                    "meanwhile"),
    "409 rollback without a previous": ("POST", "/v1/admin/rollback", {"role": "student"}, {}, 409, "nothing to roll back to"),
    "409 shadow unregistered": ("POST", "/v1/admin/shadow", {"version": "student-nope"}, {}, 409, "student-nope"),
    "413 body over the cap": ("POST", "/v1/classify", {"inputs": "x" * MAX_BODY}, {}, 413, f"more than {MAX_BODY} bytes"),
    "413 too many texts": ("POST", "/v1/classify", {"inputs": ["a"] * 65}, {}, 413, "65 texts, at most 64"),
    "413 text too long": ("POST", "/v1/classify", {"inputs": "x" * 2001}, {}, 413, "2001 characters, at most 2000"),
    "413 v2 too many texts": ("POST", "/v2/models/cascade/infer", v2(*["a"] * 65), {}, 413, "at most 64"),
    "413 too many feedback items": ("POST", "/v1/feedback", {"items": [{"request_id": "0", "index": 0, "label": "x"}] * 1001}, {}, 413,
                                    "at most 1000"),
    "415 text/plain": ("POST", "/v1/classify", {"inputs": "x"}, {"content-type": "text/plain"}, 415, "content-type: expected application/json"),
    "415 form on feedback": ("POST", "/v1/feedback", {"items": []}, {"content-type": "application/x-www-form-urlencoded"}, 415, "content-type"),
    "415 xml on v2": ("POST", "/v2/models/cascade/infer", v2("a"), {"content-type": "application/xml"}, 415,
                      "expected application/json or application/octet-stream"),
    "415 latin-1 on admin": ("POST", "/v1/admin/threshold", {"threshold": 0.5}, {"content-type": "application/json; charset=latin-1"}, 415,
                             "charset 'latin-1'"),
    "422 classify": ("POST", "/v1/classify", {"inputs": "x", "options": {"mode": "oracle"}}, {}, 422, "mode"),
    "422 nested too deeply": ("POST", "/v1/classify", b"[" * DEEP + b"]" * DEEP, {}, 422, "nested too deeply"),
    "422 feedback label": ("POST", "/v1/feedback", {"items": [{"request_id": "rid", "index": 0, "label": "no-such-intent"}]}, {}, 422,
                           "'no-such-intent' is not a label"),
    "422 admin version": ("POST", "/v1/admin/promote", {"version": "../../teacher"}, {}, 422, "version"),
    "422 admin threshold": ("POST", "/v1/admin/threshold", {"threshold": 1.5}, {}, 422, "[0, 1]"),
    "422 v2 parameters": ("POST", "/v2/models/cascade/infer", v2("a", parameters={"mode": "oracle"}), {}, 422, "parameters.mode"),
    "422 v2 body": ("POST", "/v2/models/cascade/infer", {"input": []}, {}, 422, "inputs"),
    "422 reload takes no body": ("POST", "/v1/admin/reload", {"force": True}, {}, 422, "force"),
}


def send(edge: Edge, method: str, path: str, body: Any, headers: dict) -> httpx.Response:
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"rid"', json.dumps(edge.request_id)))
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return edge.client.request(method, path, content=content, headers={**JSON, **credentials(path), **headers})


def test_every_error_status_is_json_naming_the_problem(edge):
    """Each case of ``STATUS_CASES`` in turn, on one service (none of them changes anything)."""
    for case, (method, path, body, headers, status, fragment) in STATUS_CASES.items():
        try:
            assert_error(send(edge, method, path, body, headers), status, fragment)
        except AssertionError as err:
            raise AssertionError(f"{case}: {err}") from None


def test_the_cases_cover_every_status_the_api_answers():
    """Each error status the service raises (``serving.errors``) and each of ``API_STATUSES`` has a
    case above or a test below (200, 403, 429, 503): a new status needs its edge test."""
    raised = {ServingError.status} | {cls.status for cls in ServingError.__subclasses__()}
    assert raised <= API_STATUSES
    covered = {case[4] for case in STATUS_CASES.values()} | {200, 403, 429, 503}
    assert covered == API_STATUSES


def test_every_route_answers_200_when_asked_well(edge):
    get = {path: edge.client.get(path) for path in ("/healthz", "/readyz", "/v1/stats", "/v1/models", "/dashboard/data", "/dashboard/history",
                                                    "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/cascade",
                                                    "/v2/models/cascade/ready", "/openapi.json")}
    assert {path: r.status_code for path, r in get.items()} == dict.fromkeys(get, 200)
    assert edge.client.get("/dashboard").status_code == 200
    posts = [("/v1/classify", {"inputs": "x"}), ("/v2/models/cascade/infer", v2("x")),
             ("/v1/feedback", {"items": [{"request_id": edge.request_id, "index": 0, "label": "a"}]}),
             ("/v1/admin/promote", {"version": "student-b"}), ("/v1/admin/rollback", {"role": "student"}),
             ("/v1/admin/threshold", {"threshold": 0.5}), ("/v1/admin/shadow", {"version": "student-b"}),
             ("/v1/admin/shadow", {"version": None}), ("/v1/admin/reload", None), ("/v1/admin/reload", {})]
    for path, body in posts:
        response = edge.post(path, body)
        assert response.status_code == 200, (path, response.text)
    paths = get["/openapi.json"].json()["paths"]
    # every route that takes a body is in BODY_PATHS, so that it gets the hostile bodies below
    assert {path.replace("{name}", "cascade") for path, methods in paths.items() if methods.keys() & {"post", "put", "patch"}} == set(BODY_PATHS)
    for path in BODY_PATHS:  # bodies read by the route itself are documented all the same
        if path != "/v1/admin/reload":
            assert "requestBody" in paths[path.replace("cascade", "{name}")]["post"], path


def test_feedback_and_admin_turned_off_are_403(tmp_path):
    edge = make_edge(tmp_path / "home", feedback_token=None, admin_token=None)
    assert_error(edge.post("/v1/feedback", {"items": []}), 403, "feedback: turned off; set CASCADE_FEEDBACK_TOKEN")
    for path in ("/v1/admin/promote", "/v1/admin/reload"):
        assert_error(edge.post(path, {"version": "student-b"}), 403, "admin operations: turned off; set CASCADE_ADMIN_TOKEN")


def test_past_the_in_flight_bound_classify_is_shed_with_429_and_the_rest_is_not(edge):
    limit = edge.service.in_flight
    shed_before = edge.client.get("/v1/stats").json()["reliability"]["shed_requests"]
    limit.in_flight = limit.max_in_flight  # every slot taken, as by requests in progress
    try:
        shed = edge.post("/v1/classify", {"inputs": "x"})
        assert_error(shed, 429, "overloaded")
        assert shed.headers["retry-after"] == "1"
        # only the classify path is shed: admin, health, stats and /v2 are not
        assert edge.client.get("/readyz").status_code == 200
        assert edge.post("/v1/admin/threshold", {"threshold": 0.5}).status_code == 200
        assert edge.post("/v2/models/cascade/infer", v2("x")).status_code == 200
        assert edge.client.get("/v1/stats").json()["reliability"]["shed_requests"] - shed_before == 1
    finally:
        limit.in_flight = 0
    assert edge.post("/v1/classify", {"inputs": "x"}).status_code == 200


def test_a_student_that_is_not_ready_is_503_with_retry_after_everywhere_it_is_needed(tmp_path):
    from serving.errors import Unavailable

    student = FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.7})
    student.fail = Unavailable("student unavailable, retry shortly")
    service, client, _ = make_service(tmp_path / "home", student=student, feedback_token=FEEDBACK_TOKEN)
    for method, path, body in [("GET", "/readyz", None), ("GET", "/v2/health/ready", None), ("GET", "/v2/models/cascade/ready", None),
                               ("GET", "/v1/models", None), ("GET", "/v1/stats", None), ("POST", "/v1/classify", {"inputs": "x"}),
                               ("POST", "/v2/models/cascade/infer", v2("x"))]:
        response = client.request(method, path, json=body)
        assert_error(response, 503, "not ready" if "ready" in path else "student unavailable")
        assert response.headers["retry-after"] == "1", path
    assert client.get("/healthz").json() == {"status": "alive"}  # alive, not ready
    assert client.get("/v2/health/live").json() == {"live": True}


# ---- hostile bodies on every route that takes one

BODY_PATHS = ["/v1/classify", "/v1/feedback", "/v2/models/cascade/infer", "/v1/admin/promote", "/v1/admin/rollback",
              "/v1/admin/threshold", "/v1/admin/shadow", "/v1/admin/reload"]


def valid_body(edge: Edge, path: str) -> dict:
    """A body ``path`` answers with 200 (once, on a fresh edge: a rollback needs the promotion made here first)."""
    if path == "/v1/admin/rollback":
        edge.registry.promote("student", VERSIONS[1])
    return {
        "/v1/classify": {"inputs": ["x", "y"], "options": {"mode": "cascade", "threshold": 0.5, "top_k": 1, "evaluation": False}},
        "/v1/feedback": {"items": [{"request_id": edge.request_id, "index": 0, "label": "a"}]},
        "/v2/models/cascade/infer": {"id": "r1", "parameters": {"mode": "cascade", "threshold": 0.5},
                                     "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        "/v1/admin/promote": {"role": "student", "version": "student-b", "expected_current": None},
        "/v1/admin/rollback": {"role": "student"},
        "/v1/admin/threshold": {"threshold": 0.5},
        "/v1/admin/shadow": {"version": "student-b"},
        "/v1/admin/reload": {},
    }[path]


def invalid_json_status(path: str) -> int:
    return 400 if path.startswith("/v2") else 422


def nested(depth: int, inner: bytes = b"", kind: str = "array") -> bytes:
    open_, close = (b"[", b"]") if kind == "array" else (b'{"a":', b"}")
    return open_ * depth + (inner or (b"" if kind == "array" else b"1")) + close * depth


def test_deep_nesting_is_refused_naming_it(edge):
    """A body nested 50,000 levels deep (100 KB, under every limit) used to be a plain-text 500
    (RecursionError); arrays and objects, at the top and inside a field, are a 4xx saying why."""
    for path in BODY_PATHS:
        status = invalid_json_status(path)
        for body in (nested(DEEP), nested(DEEP // 5, kind="object"), b'{"inputs": ' + nested(DEEP) + b"}", nested(300),
                     b'{"items": [' + nested(DEEP // 10, kind="object") + b"]}"):
            assert len(body) < MAX_BODY
            assert_error(edge.post(path, content=body), status, "nested too deeply")
        # a lone surrogate first (pydantic-core refuses it, Python's parser takes it), then deep nesting
        for depth in (150, 900, DEEP):
            body = b'{"inputs": "zebra \\ud800", "y": ' + nested(depth) + b"}"
            assert_error(edge.post(path, content=body), set(range(400, 500)))


def with_value(body: Any, slot: tuple, value: Any) -> Any:
    """A deep copy of ``body`` with the value at ``slot`` (keys and indices) replaced."""
    body = json.loads(json.dumps(body))
    *parents, last = slot
    target = body
    for key in parents:
        target = target[key]
    target[last] = value
    return body


JSON_TYPES = {"null": None, "bool": True, "int": 7, "float": 1.5, "text": "7", "array": ["x"], "object": {"x": 1}}
# the slots of each valid body where a text or a number (or a bool) belongs, with the JSON types they take
SLOTS: dict[str, list[tuple[tuple, set[str]]]] = {
    "/v1/classify": [(("inputs",), {"text", "array"}), (("inputs", 0), {"text"}), (("options",), {"object"}),
                     (("options", "mode"), {"text"}), (("options", "threshold"), {"int", "float", "null"}),
                     (("options", "top_k"), {"int"}), (("options", "evaluation"), {"bool"})],
    "/v1/feedback": [(("items",), {"array"}), (("items", 0), {"object"}), (("items", 0, "request_id"), {"text"}),
                     (("items", 0, "index"), {"int"}), (("items", 0, "label"), {"text"})],
    "/v2/models/cascade/infer": [(("id",), {"text", "null"}), (("parameters", "mode"), {"text"}),
                                 (("parameters", "threshold"), {"int", "float"}), (("inputs",), {"array"}),
                                 (("inputs", 0, "name"), {"text"}), (("inputs", 0, "datatype"), {"text"}),
                                 (("inputs", 0, "shape"), {"array"}), (("inputs", 0, "shape", 0), {"int"}),
                                 (("inputs", 0, "data", 0), {"text", "array"})],
    "/v1/admin/promote": [(("role",), {"text"}), (("version",), {"text"}), (("expected_current",), {"text", "null"})],
    "/v1/admin/rollback": [(("role",), {"text"})],
    "/v1/admin/threshold": [(("threshold",), {"int", "float", "null"})],
    "/v1/admin/shadow": [(("version",), {"text", "null"})],
}


def test_every_json_type_where_a_text_or_a_number_belongs_is_refused_naming_the_field(edge):
    for path in SLOTS:
        body = valid_body(edge, path)
        refused = 0
        for slot, takes in SLOTS[path]:
            name = next(str(key) for key in reversed(slot) if isinstance(key, str))
            for kind, value in JSON_TYPES.items():
                response = edge.post(path, with_value(body, slot, value))
                if kind in takes:
                    assert response.status_code < 500 and "json" in response.headers["content-type"], (slot, kind, response.text)
                else:
                    assert_error(response, set(range(400, 500)) - {401, 403, 404, 405, 413, 415}, name)
                    refused += 1
        assert refused >= len(SLOTS[path]) * 4


def test_every_json_type_as_the_whole_body_is_refused(edge):
    for path in BODY_PATHS:
        for kind, value in JSON_TYPES.items():
            response = edge.post(path, content=json.dumps(value).encode())
            assert_error(response, {invalid_json_status(path), 422}, "body" if kind != "object" else "x")
        assert_error(edge.post(path, content=b"{oops"), invalid_json_status(path), "not valid JSON")


def test_a_body_at_the_cap_is_read_and_one_byte_more_is_413(edge):
    for path in BODY_PATHS:  # in this order each valid body answers 200
        body = json.dumps(valid_body(edge, path)).encode()
        at_cap = body + b" " * (MAX_BODY - len(body))  # JSON may end in whitespace
        assert len(at_cap) == MAX_BODY
        response = edge.post(path, content=at_cap)
        assert response.status_code == 200, (path, response.text)
        assert_error(edge.post(path, content=at_cap + b" "), 413, f"request body: more than {MAX_BODY} bytes")
        chunks = iter([at_cap[:1000], at_cap[1000:], b" "])  # no Content-Length: the guard counts what arrives
        assert_error(edge.post(path, content=chunks), 413, f"more than {MAX_BODY} bytes")


def test_bodies_not_utf8_empty_or_not_declared_json_are_refused(edge):
    for path in BODY_PATHS:
        body = json.dumps(valid_body(edge, path)).encode()
        not_utf8 = body.replace(b"{", b'{"\xe9": 1, ', 1)
        assert_error(edge.post(path, content=not_utf8), 400, "request body: not valid UTF-8 at byte offset 2")
        # the binary tensor header skips the guard's check (its data is not text): the JSON is still read as UTF-8
        binary = {"Inference-Header-Content-Length": str(len(not_utf8))}
        assert_error(edge.post(path, content=not_utf8, headers=binary), {400, 422}, "not valid")
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
                             "application/json; charset=latin-1", "application/jsonp"):
            assert_error(edge.post(path, content=body, headers={"content-type": content_type}), 415, "content-type")
        for content_type in ("application/json; charset=UTF-8", "application/merge-patch+json", "APPLICATION/JSON"):
            assert edge.post(path, content=body, headers={"content-type": content_type}).status_code != 415, content_type
        without = edge.client.post(path, content=body, headers=credentials(path))
        assert without.status_code != 415  # no content type: JSON is assumed
        for empty in (b"", b"  \n"):
            response = edge.post(path, content=empty)
            if path == "/v1/admin/reload" and not empty:
                assert response.status_code == 200  # it takes no body
            else:
                assert_error(response, invalid_json_status(path), "body: empty; expected a JSON object")


def test_v2_takes_octet_stream_and_binary_tensor_data_of_any_bytes(edge):
    """Binary BYTES elements are length-prefixed: a text of 200 bytes puts 0xc8, not UTF-8, in the
    body, which the guard used to refuse as a whole."""
    import tritonclient.http as triton
    import numpy as np

    texts = ["x" * 200, "überweisung " * 30]
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=True)
    body, length = triton.InferenceServerClient.generate_request_body([tensor])
    for headers in ({}, {"content-type": "application/octet-stream"}):
        response = edge.client.post("/v2/models/cascade/infer", content=body, headers={"Inference-Header-Content-Length": str(length), **headers})
        assert response.status_code == 200, response.text
    broken = body[: length - 2] + b"\xff" + body[length - 1:]  # inside the JSON header
    response = edge.client.post("/v2/models/cascade/infer", content=broken, headers={"Inference-Header-Content-Length": str(length)})
    assert_error(response, 400, "JSON header is not valid UTF-8")
    element = body[:-3] + b"\xff\xfe\xfd"  # inside the last text
    response = edge.client.post("/v2/models/cascade/infer", content=element, headers={"Inference-Header-Content-Length": str(length)})
    assert_error(response, 400, "not valid UTF-8")


# ---- /v1/classify: named problems and a fuzz run (from tests/reliability/test_edges_http.py)


BAD_INPUTS = [
        (b'{"inputs": "caf\xe9 au lait"}', 400, "not valid UTF-8"),
        (json.dumps({"inputs": "x" * (MAX_BODY + 1)}).encode(), 413, f"more than {MAX_BODY} bytes"),
        (json.dumps({"inputs": "x" * 2001}).encode(), 413, "2001 characters, at most 2000"),
        (b'{"inputs": ["ok", 7]}', 422, "inputs"),
        (b'{"inputs": null}', 422, "inputs"),
        (b'["play some jazz"]', 422, "body"),
        (b'{"inputs": "\\t\\n  "}', 422, "empty or whitespace"),
        (b'{"inputs": ["ok", "zebra \\ud800"]}', 422, "inputs[1]: not valid Unicode at character 6"),
        (b'{"inputs": "x", "options": {"threshold": -0.1}}', 422, "threshold"),
        (b'{"inputs": "x", "options": {"threshold": "high"}}', 422, "threshold"),
        (b'{"inputs": "x", "options": {"mode": "oracle"}}', 422, "mode"),
        (b'{"inputs": "x", "options": {"top_k": "3"}}', 422, "top_k"),
        (b'{"inputs": "x", "options": []}', 422, "options"),
        (json.dumps({"inputs": ["a"] * 65}).encode(), 413, "at most 64"),
        (b"", 422, "body"),
]


def test_bad_input_gets_a_4xx_json_error_naming_the_problem(edge):
    for content, status, fragment in BAD_INPUTS:
        assert_error(edge.post("/v1/classify", content=content), status, fragment)


def test_framework_errors_are_json_too(edge):
    missing = edge.client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong_method = edge.client.get("/v1/classify")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}


TEXTS = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates too: JSON escapes can carry them
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXTS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ALMOST_VALID = st.fixed_dictionaries(
    {"inputs": st.one_of(TEXTS, st.text(max_size=200), st.lists(TEXTS, max_size=70), JSON_VALUES)},
    optional={"options": st.one_of(
        st.fixed_dictionaries({}, optional={
            "mode": st.one_of(st.sampled_from(["cascade", "student", "teacher", "Teacher", ""]), JSON_VALUES),
            "threshold": st.one_of(st.floats(), st.integers(-2, 2), JSON_VALUES),
            "top_k": st.one_of(st.integers(-5, 200), JSON_VALUES),
        }),
        JSON_VALUES,
    )},
)
BODIES = st.one_of(
    ALMOST_VALID.map(lambda body: json.dumps(body).encode()),  # json.dumps writes NaN and Infinity, as careless clients do
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
)
FUZZ_EXAMPLES = 200
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def test_fuzzed_bodies_never_get_a_5xx(edge):
    """Hypothesis draws classify bodies: every answer is JSON, a 200 answers each text sent, the
    rest are 4xx naming the problem; the run reaches both valid and invalid bodies."""
    statuses: Counter = Counter()

    @FUZZ
    @given(body=BODIES)
    def send_one(body):
        response = edge.post("/v1/classify", content=body)
        statuses[response.status_code] += 1
        answer = response.json()  # every answer is JSON
        if response.status_code == 200:
            sent = json.loads(body)["inputs"]
            assert len(answer["predictions"]) == (1 if isinstance(sent, str) else len(sent)), body
        else:
            assert 400 <= response.status_code < 500 and isinstance(answer["error"], str), (body, response.status_code, answer)

    send_one()
    print(f"\nfuzz: {sum(statuses.values())} cases, status counts {dict(sorted(statuses.items()))}")
    assert set(statuses) <= {200, 400, 413, 422}, statuses  # only the statuses a classify body can earn
    assert statuses[200] > 0 and statuses[422] > 0, "the fuzz run must reach both valid and invalid bodies"


HOSTILE = st.one_of(
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.tuples(st.integers(1, 3000), st.sampled_from(["array", "object"])).map(lambda d: nested(d[0], kind=d[1])),
)


def fuzz_route(edge: Edge, path: str) -> None:
    """Hypothesis draws JSON values, bytes and deep nesting for ``path``: every answer is JSON, never a 5xx."""

    @settings(FUZZ, max_examples=30)
    @given(body=HOSTILE)
    def send_one(body):
        response = edge.post(path, content=body)
        answer = response.json()
        assert response.status_code < 500, (body[:100], answer)
        assert response.status_code == 200 or isinstance(answer["error"], str)

    send_one()


def test_fuzzed_bodies_on_every_route_are_json_and_never_5xx(edge):
    for path in BODY_PATHS:
        fuzz_route(edge, path)


# ---- feedback: every status, and a fuzz run that loses nothing (from tests/reliability/test_edges_http.py)


def classified(edge: Edge, texts: list[str], **options) -> dict:
    response = edge.client.post("/v1/classify", json={"inputs": texts, "options": options})
    assert response.status_code == 200, response.text
    return response.json()


def test_feedback_answers_every_status_over_http(edge):
    student, teacher = classified(edge, ["x", "y"], threshold=0.4), classified(edge, ["z"], mode="teacher")
    assert [p["tier"] for p in student["predictions"] + teacher["predictions"]] == ["student", "student", "teacher"]
    labels = edge.client.get("/v1/models").json()["labels"]
    truth = labels[0], teacher["predictions"][0]["label"]
    items = [{"request_id": student["request_id"], "index": 0, "label": truth[0]},
             {"request_id": teacher["request_id"], "index": 0, "label": truth[1]}]
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": FEEDBACK_TOKEN},
                    {"Authorization": f"Bearer {TOKEN}"}):
        assert_error(edge.post("/v1/feedback", {"items": items}, headers=headers), 401, "feedback")
    assert_error(edge.post("/v1/feedback", {"items": [{**items[0], "request_id": "0" * 32}]}), 404, "not a kept request")
    assert_error(edge.post("/v1/feedback", {"items": [{**items[0], "index": 2}]}), 404, "no index 2")
    assert_error(edge.post("/v1/feedback", {"items": [{**items[0], "label": "no-such-intent"}]}), 422, "'no-such-intent'")
    assert_error(edge.post("/v1/feedback", {"items": [{"request_id": "0", "index": 0, "label": "x"}] * 1001}), 413, "at most 1000")
    before = edge.client.get("/v1/stats").json()["feedback"]
    assert edge.post("/v1/feedback", {"items": items}).json() == {"recorded": 2, "changed": 0, "unchanged": 0}
    assert edge.post("/v1/feedback", {"items": items}).json() == {"recorded": 0, "changed": 0, "unchanged": 2}
    after = edge.client.get("/v1/stats").json()["feedback"]
    assert after["student"]["items"] - before["student"]["items"] == 1
    assert (after["teacher"]["items"] - before["teacher"]["items"], after["teacher"]["correct"] - before["teacher"]["correct"]) == (1, 1)
    other = next(label for label in labels if label != truth[1])
    changed = edge.post("/v1/feedback", {"items": [{**items[1], "label": other}]})
    assert changed.json() == {"recorded": 1, "changed": 1, "unchanged": 0}
    assert edge.client.get("/v1/stats").json()["feedback"]["teacher"]["correct"] == before["teacher"]["correct"]
    kept = read_feedback(edge.service.config.paths().feedback)
    assert kept[(student["request_id"], 0)].tier == "student" and kept[(teacher["request_id"], 0)].replaces == truth[1]


FEEDBACK_EXAMPLES = 100


def test_fuzzed_feedback_never_gets_a_5xx_and_loses_nothing(edge):
    """Hypothesis draws feedback bodies around a real answer: every answer is JSON and 4xx or
    200, and every 200's items are in the feedback log with the label sent last."""
    texts = ["a", "b", "c", "d", "e"]
    answer = classified(edge, texts)
    labels = edge.client.get("/v1/models").json()["labels"]
    item = st.fixed_dictionaries(
        {"request_id": st.one_of(st.just(answer["request_id"]), TEXTS, JSON_VALUES),
         "index": st.one_of(st.integers(-2, len(texts) + 2), JSON_VALUES),
         "label": st.one_of(st.sampled_from(labels), TEXTS, JSON_VALUES)},
        optional={"extra": JSON_VALUES},
    )
    bodies = st.one_of(st.fixed_dictionaries({"items": st.lists(item, max_size=6)}).map(lambda b: json.dumps(b).encode()),
                       JSON_VALUES.map(lambda value: json.dumps(value).encode()), st.binary(max_size=200))
    accepted: dict[tuple[str, int], str] = {}
    statuses: Counter = Counter()
    valid = {"request_id": answer["request_id"], "index": 1, "label": labels[0]}

    @settings(FUZZ, max_examples=FEEDBACK_EXAMPLES)
    @given(body=bodies)
    @example(body=json.dumps({"items": [valid, {**valid, "label": labels[-1]}]}).encode())  # the later label wins
    @example(body=json.dumps({"items": [{**valid, "index": 99}]}).encode())
    def send_one(body):
        response = edge.post("/v1/feedback", content=body)
        statuses[response.status_code] += 1
        answer_body = response.json()  # every answer is JSON
        assert response.status_code < 500, (body, answer_body)
        if response.status_code == 200:
            for sent in json.loads(body)["items"]:
                accepted[(sent["request_id"], sent["index"])] = sent["label"]
        else:
            assert isinstance(answer_body["error"], str)

    send_one()
    print(f"\nfeedback fuzz: {sum(statuses.values())} bodies, status counts {dict(sorted(statuses.items()))}")
    kept = read_feedback(edge.service.config.paths().feedback)
    assert all(kept[key].label == label for key, label in accepted.items()), "an acknowledged label is missing"
    assert statuses[200] > 0 and statuses[422] > 0 and statuses[404] > 0


# ---- admin: the token, and what each call answers (from tests/reliability/test_edges_http.py)


def test_admin_calls_need_the_token(edge):
    registry = edge.registry
    current, other = VERSIONS
    calls = [("/v1/admin/promote", {"version": other}), ("/v1/admin/rollback", {}), ("/v1/admin/threshold", {"threshold": 0.5}),
             ("/v1/admin/shadow", {"version": other}), ("/v1/admin/reload", None)]
    for path, body in calls:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = edge.post(path, body, headers=headers)
            assert_error(response, 401, "admin operations")
            assert response.headers["www-authenticate"] == "Bearer"
    assert registry.current("student") == current, "a refused call changed something"
    assert registry.shadow("student") is None
    promoted = edge.post("/v1/admin/promote", {"version": other})
    assert promoted.status_code == 200 and promoted.json() == {"role": "student", "current": other, "previous": current}
    rolled = edge.post("/v1/admin/rollback", {"role": "student"})
    assert rolled.status_code == 200 and rolled.json()["current"] == current and registry.current("student") == current
    assert edge.post("/v1/admin/reload").json() == {"student": "student-v1", "teacher": "teacher-v1"}  # the fakes' versions
    assert_error(edge.post("/v1/admin/promote", {"version": "../../teacher"}), 422, "version")
    assert_error(edge.post("/v1/admin/promote", {"version": "student-nope"}), 409, "student-nope")
    threshold = edge.post("/v1/admin/threshold", {"threshold": 0.0})
    assert threshold.json() == {"threshold": 0.0, "previous": 0.9}
    answers = edge.client.post("/v1/classify", json={"inputs": ["x", "y", "z"]}).json()["predictions"]
    assert all(p["tier"] == "student" for p in answers)  # 0.5 confidence is above 0.0: the student answers alone
    assert edge.post("/v1/admin/threshold", {"threshold": 0.9}).status_code == 200
    assert_error(edge.post("/v1/admin/threshold", {"threshold": 1.5}), 422, "[0, 1]")
    for flag in (True, "0.5"):  # strict: a bool or a text is no threshold
        assert_error(edge.post("/v1/admin/threshold", {"threshold": flag}), 422, "threshold")
    assert edge.client.get("/v1/models").json()["threshold"] == 0.9


def test_a_reload_that_fails_is_409_and_keeps_the_versions(tmp_path):
    student = FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.7})

    async def broken():
        raise RuntimeError("student-v2 does not load")

    student.reload = broken
    edge = make_edge(tmp_path / "home", student=student)
    assert_error(edge.post("/v1/admin/reload"), 409, "reload failed, serving versions kept: student-v2 does not load")
    assert edge.client.post("/v1/classify", json={"inputs": "x"}).json()["versions"]["student"] == "student-v1"
