"""The real application at its edges: bad input, a property-based fuzz run, admin calls with and
without the token, redaction in the log, a full disk under the escalation log, and shedding
past the in-flight bound. One Ray Serve application for the module."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fault_tools import IN_DOMAIN, ODD, Load, reliability_config, replica_pids, restart_ingress_replicas, running_cascade, wait_ready
from distill.data import load_splits
from distill.escalations import read_records
from distill.feedback import read_feedback
from distill.registry import Registry

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token-7"
FEEDBACK_TOKEN = "test-feedback-token-3"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """The escalation log's directory: on a 4 MiB tmpfs when this machine lets us mount one (a
    disk that really fills up), else a plain directory (the full-disk test then caps the writer's
    file size instead)."""
    mount = tmp_path_factory.mktemp("small-disk")
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode == 0
    yield mount / "escalations", mounted
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def app(tiny_home, log_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("edges") / "home"
    shutil.copytree(tiny_home, home)  # the admin calls promote, roll back and set the threshold in it, not in the session's home
    config = reliability_config(
        home, log_dir[0], limits={"max_body_bytes": MAX_BODY, "max_text_chars": 2000}, ingress={"max_in_flight": 4},
        feedback={"traffic_path": str(home / "traffic"), "path": str(home / "feedback")},  # off the small disk
    )
    # read by the ingress at start, in the Ray workers this process starts
    os.environ |= {"CASCADE_ADMIN_TOKEN": TOKEN, "CASCADE_FEEDBACK_TOKEN": FEEDBACK_TOKEN}
    try:
        with running_cascade(config) as url:
            yield url, config
    finally:
        del os.environ["CASCADE_ADMIN_TOKEN"], os.environ["CASCADE_FEEDBACK_TOKEN"]


def post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=60, **kwargs)


@pytest.mark.parametrize(
    "content, status, fragment",
    [
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
    ],
)
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(app, content, status, fragment):
    response = post(app[0], "/v1/classify", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_framework_errors_are_json_too(app):
    missing = httpx.get(f"{app[0]}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong_method = httpx.get(f"{app[0]}/v1/classify")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}


def test_a_body_without_content_length_is_capped_too(app):
    chunks = iter([b'{"inputs": "', b"x" * MAX_BODY, b'"}'])
    response = post(app[0], "/v1/classify", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["error"]


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
FUZZ_EXAMPLES = 400


@pytest.fixture(scope="module")
def fuzz_run(app) -> list[tuple[bytes, int, dict | str]]:
    """FUZZ_EXAMPLES bodies drawn by Hypothesis, each sent once for the module: (body, status,
    the JSON answer or the raw text when it is not JSON). Both tests below read this one run,
    so each passes alone and in any order."""
    cases: list[tuple[bytes, int, dict | str]] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
    @given(body=BODIES)
    def send(body):
        response = post(app[0], "/v1/classify", content=body, headers={"content-type": "application/json"})
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        cases.append((body, response.status_code, answer))

    send()
    return cases


def test_fuzzed_bodies_never_get_a_5xx(fuzz_run):
    for body, status, answer in fuzz_run:
        assert status < 500, (body, answer)
        assert isinstance(answer, dict), (body, status, answer)  # every answer is JSON
        if status == 200:
            sent = json.loads(body)["inputs"]
            assert len(answer["predictions"]) == (1 if isinstance(sent, str) else len(sent)), body
        else:
            assert 400 <= status < 500 and isinstance(answer["error"], str), (body, status, answer)


def test_fuzz_run_size(fuzz_run):
    """The fuzz run is as large as asked and reaches both valid and invalid bodies."""
    statuses = Counter(status for _, status, _ in fuzz_run)
    print(f"\nfuzz: {len(fuzz_run)} cases, status counts {dict(sorted(statuses.items()))}")
    assert len(fuzz_run) >= FUZZ_EXAMPLES
    assert statuses[200] > 0 and statuses[422] > 0, "the fuzz run must reach both valid and invalid bodies"


def classified(url: str, texts: list[str], **options) -> dict:
    response = httpx.post(f"{url}/v1/classify", json={"inputs": texts, "options": options}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_feedback_answers_every_status_over_http(app):
    url, config = app
    student, teacher = classified(url, [IN_DOMAIN[0], IN_DOMAIN[2]]), classified(url, [ODD[0]], mode="teacher")
    assert [p["tier"] for p in student["predictions"] + teacher["predictions"]] == ["student", "student", "teacher"]
    labels = httpx.get(f"{url}/v1/models").json()["labels"]
    truth = labels[0], teacher["predictions"][0]["label"]
    items = [{"request_id": student["request_id"], "index": 0, "label": truth[0]},
             {"request_id": teacher["request_id"], "index": 0, "label": truth[1]}]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": FEEDBACK_TOKEN}, {"Authorization": f"Bearer {TOKEN}"}):
        refused = post(url, "/v1/feedback", json={"items": items}, headers=headers)
        assert refused.status_code == 401 and "feedback" in refused.json()["error"], headers
    unknown = post(url, "/v1/feedback", json={"items": [{**items[0], "request_id": "0" * 32}]}, headers=FEEDBACK)
    assert unknown.status_code == 404 and "not a kept request" in unknown.json()["error"]
    past_end = post(url, "/v1/feedback", json={"items": [{**items[0], "index": 2}]}, headers=FEEDBACK)
    assert past_end.status_code == 404 and "no index 2" in past_end.json()["error"]
    bad_label = post(url, "/v1/feedback", json={"items": [{**items[0], "label": "no-such-intent"}]}, headers=FEEDBACK)
    assert bad_label.status_code == 422 and "'no-such-intent'" in bad_label.json()["error"]
    too_many = post(url, "/v1/feedback", json={"items": [{"request_id": "0", "index": 0, "label": "x"}] * 1001}, headers=FEEDBACK)
    assert too_many.status_code == 413 and "at most 1000" in too_many.json()["error"]
    before = httpx.get(f"{url}/v1/stats").json()["feedback"]
    assert post(url, "/v1/feedback", json={"items": items}, headers=FEEDBACK).json() == {"recorded": 2, "changed": 0, "unchanged": 0}
    assert post(url, "/v1/feedback", json={"items": items}, headers=FEEDBACK).json() == {"recorded": 0, "changed": 0, "unchanged": 2}
    after = httpx.get(f"{url}/v1/stats").json()["feedback"]
    assert after["student"]["items"] - before["student"]["items"] == 1
    assert (after["teacher"]["items"] - before["teacher"]["items"], after["teacher"]["correct"] - before["teacher"]["correct"]) == (1, 1)
    other = next(label for label in labels if label != truth[1])
    changed = post(url, "/v1/feedback", json={"items": [{**items[1], "label": other}]}, headers=FEEDBACK)
    assert changed.json() == {"recorded": 1, "changed": 1, "unchanged": 0}
    assert httpx.get(f"{url}/v1/stats").json()["feedback"]["teacher"]["correct"] == before["teacher"]["correct"]
    kept = read_feedback(config.feedback_path())
    assert kept[(student["request_id"], 0)].tier == "student" and kept[(teacher["request_id"], 0)].replaces == truth[1]


def test_feedback_reaches_an_item_answered_before_the_ingress_restarted(app):
    url, config = app
    answer = classified(url, [IN_DOMAIN[1]])
    assert answer["predictions"][0]["tier"] == "student" and answer["logged"] == 0  # not in the escalation log
    restart_ingress_replicas()
    wait_ready(url, "/readyz")
    label = httpx.get(f"{url}/v1/models").json()["labels"][1]
    response = post(url, "/v1/feedback", json={"items": [{"request_id": answer["request_id"], "index": 0, "label": label}]},
                    headers=FEEDBACK)
    assert response.status_code == 200 and response.json()["recorded"] == 1, response.text
    record = read_feedback(config.feedback_path())[(answer["request_id"], 0)]
    assert (record.text, record.tier, record.label) == (IN_DOMAIN[1], "student", label)


def test_live_accuracy_by_tier_equals_the_clients_own_count(app, tiny_data):
    """Hundreds of items answered, each item's gold label sent back: /v1/stats' live accuracy by
    tier moves by exactly what the client counts from the answers it got."""
    url = app[0]
    splits = load_splits(str(tiny_data))
    rows = list(zip(splits.train.texts, splits.train.labels))[:320] + list(zip(ODD * 8, ["?"] * 40))
    labels = httpx.get(f"{url}/v1/models").json()["labels"]
    before = httpx.get(f"{url}/v1/stats").json()["feedback"]
    own = {tier: [0, 0] for tier in ("student", "teacher")}
    items = []
    for start in range(0, len(rows), 40):
        chunk = rows[start:start + 40]
        answer = classified(url, [text for text, _ in chunk], threshold=0.95)
        for i, ((_, gold), prediction) in enumerate(zip(chunk, answer["predictions"])):
            gold = gold if gold in labels else labels[i % len(labels)]  # the odd texts get some label as their truth
            own[prediction["tier"]][0] += 1
            own[prediction["tier"]][1] += prediction["label"] == gold
            items.append({"request_id": answer["request_id"], "index": i, "label": gold})
    for start in range(0, len(items), 100):
        assert post(url, "/v1/feedback", json={"items": items[start:start + 100]}, headers=FEEDBACK).status_code == 200
    after = httpx.get(f"{url}/v1/stats").json()["feedback"]
    counted = {tier: [after[tier]["items"] - before[tier]["items"], after[tier]["correct"] - before[tier]["correct"]] for tier in own}
    print(f"\nlive accuracy by tier over {len(items)} items: client {own}, /v1/stats {counted}")
    assert counted == own and own["student"][0] > 0 and own["teacher"][0] > 0


FEEDBACK_EXAMPLES = 200


def test_fuzzed_feedback_never_gets_a_5xx_and_loses_nothing(app):
    """Hypothesis draws feedback bodies around a real answer: every answer is JSON and 4xx or
    200, and every 200's items are in the feedback log with the label sent last."""
    url, config = app
    answer = classified(url, IN_DOMAIN + ODD)
    labels = httpx.get(f"{url}/v1/models").json()["labels"]
    item = st.fixed_dictionaries(
        {"request_id": st.one_of(st.just(answer["request_id"]), TEXTS, JSON_VALUES),
         "index": st.one_of(st.integers(-2, len(IN_DOMAIN + ODD) + 2), JSON_VALUES),
         "label": st.one_of(st.sampled_from(labels), TEXTS, JSON_VALUES)},
        optional={"extra": JSON_VALUES},
    )
    bodies = st.one_of(st.fixed_dictionaries({"items": st.lists(item, max_size=6)}).map(lambda b: json.dumps(b).encode()),
                       JSON_VALUES.map(lambda value: json.dumps(value).encode()), st.binary(max_size=200))
    accepted: dict[tuple[str, int], str] = {}
    statuses: Counter = Counter()

    valid = {"request_id": answer["request_id"], "index": 1, "label": labels[0]}

    @settings(max_examples=FEEDBACK_EXAMPLES, deadline=None, database=None)
    @given(body=bodies)
    @example(body=json.dumps({"items": [valid, {**valid, "label": labels[-1]}]}).encode())  # the later label wins
    @example(body=json.dumps({"items": [{**valid, "index": 99}]}).encode())
    def send(body):
        response = post(url, "/v1/feedback", content=body, headers={**FEEDBACK, "content-type": "application/json"})
        statuses[response.status_code] += 1
        answer_body = response.json()  # every answer is JSON
        assert response.status_code < 500, (body, answer_body)
        if response.status_code == 200:
            for sent in json.loads(body)["items"]:
                accepted[(sent["request_id"], sent["index"])] = sent["label"]
        else:
            assert isinstance(answer_body["error"], str)

    send()
    print(f"\nfeedback fuzz: {sum(statuses.values())} bodies, status counts {dict(sorted(statuses.items()))}")
    kept = read_feedback(config.feedback_path())
    assert all(kept[key].label == label for key, label in accepted.items()), "an acknowledged label is missing"
    assert statuses[200] > 0 and statuses[422] > 0 and statuses[404] > 0


def test_admin_calls_need_the_token(app):
    url, config = app
    registry = Registry(config.home / "registry")
    current = registry.current("student")
    other = registry.derive("student", current).version
    calls = [("/v1/admin/promote", {"version": other}), ("/v1/admin/rollback", {}),
             ("/v1/admin/threshold", {"threshold": 0.5}), ("/v1/admin/reload", None)]
    for path, body in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = post(url, path, json=body, headers=headers)
            assert response.status_code == 401 and "error" in response.json(), (path, headers)
    assert registry.current("student") == current, "a refused call changed something"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    promoted = post(url, "/v1/admin/promote", json={"version": other}, headers=auth)
    assert promoted.status_code == 200 and promoted.json() == {"role": "student", "current": other, "previous": current}
    assert post(url, "/v1/admin/reload", headers=auth).json()["student"] == other
    assert httpx.post(f"{url}/v1/classify", json={"inputs": "play some jazz"}).json()["versions"]["student"] == other
    rolled = post(url, "/v1/admin/rollback", json={"role": "student"}, headers=auth)
    assert rolled.status_code == 200 and rolled.json()["current"] == current
    assert post(url, "/v1/admin/reload", headers=auth).json()["student"] == current
    assert post(url, "/v1/admin/promote", json={"version": "../../teacher"}, headers=auth).status_code == 422
    unknown = post(url, "/v1/admin/promote", json={"version": "student-nope"}, headers=auth)
    assert unknown.status_code == 409 and "student-nope" in unknown.json()["error"]
    threshold = post(url, "/v1/admin/threshold", json={"threshold": 0.0}, headers=auth)
    assert threshold.json() == {"threshold": 0.0, "previous": 0.9}
    assert all(p["tier"] == "student" for p in httpx.post(f"{url}/v1/classify", json={"inputs": ODD}).json()["predictions"])
    assert post(url, "/v1/admin/threshold", json={"threshold": 0.9}, headers=auth).status_code == 200
    assert post(url, "/v1/admin/threshold", json={"threshold": 1.5}, headers=auth).status_code == 422


def test_card_numbers_and_emails_are_masked_in_the_log(app, log_dir):
    text = "zebra card 4111 1111 1111 1111 mail ann@example.org"
    body = httpx.post(f"{app[0]}/v1/classify", json={"inputs": text, "options": {"mode": "teacher"}}, timeout=30).json()
    assert body["logged"] == 1
    [record] = [r for r in read_records(log_dir[0]) if r.request_id == body["request_id"]]
    assert record.text == "zebra card [CARD] mail [EMAIL]"


@contextmanager
def full_disk(log_dir: Path, mounted: bool):
    """Make the log's disk refuse writes for real: fill the tmpfs, or (no tmpfs) cap the file
    size of the ingress process, which writes the log, at 0 with RLIMIT_FSIZE."""
    if mounted:
        filler = log_dir.parent / "filler"
        with filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        try:
            yield "tmpfs filled (ENOSPC)"
        finally:
            filler.unlink()
    else:
        [pid] = replica_pids("Ingress")
        old = resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            yield "RLIMIT_FSIZE 0 on the ingress, which writes the log (EFBIG)"
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, old)


def test_full_disk_fails_logging_loudly_but_no_request(app, log_dir):
    url = app[0]
    # 20 records (about 9 KB) a request: more than the open segment's last page can still take
    body = {"inputs": ODD * 4, "options": {"mode": "teacher"}}
    before = httpx.get(f"{url}/v1/stats").json()["reliability"]
    with full_disk(*log_dir) as how:
        answers = [httpx.post(f"{url}/v1/classify", json=body, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    on_disk = Counter(r.request_id for r in read_records(log_dir[0]))
    for answer in (a.json() for a in answers):
        assert all(p["tier"] == "teacher" for p in answer["predictions"]), "the answers themselves are unaffected"
        assert answer["logged"] == 0 == on_disk[answer["request_id"]], "nothing written, nothing acknowledged"
    stats = httpx.get(f"{url}/v1/stats").json()["reliability"]
    assert stats["log_write_errors"] - before["log_write_errors"] == 3
    assert stats["unlogged_records"] - before["unlogged_records"] == 60
    after = httpx.post(f"{url}/v1/classify", json=body, timeout=30).json()
    assert after["logged"] == 20, "logging resumes once space is back"
    assert sum(r.request_id == after["request_id"] for r in read_records(log_dir[0])) == 20
    print(f"\nfull disk ({how}): 3 requests answered 200 with logged 0, 3 log write errors and 60 unlogged records counted; "
          "logging resumed after")


def test_past_the_in_flight_bound_requests_are_shed_with_retry_after(app):
    url = app[0]
    shed_before = httpx.get(f"{url}/v1/stats").json()["reliability"]["shed_requests"]
    with Load(url, {"inputs": (IN_DOMAIN + ODD) * 7, "options": {"mode": "teacher"}}, clients=12) as load:
        time.sleep(4)
    statuses = [a.status for a in load.answers]
    shed = [a for a in load.answers if a.status == 429]
    assert set(statuses) <= {200, 429} and shed and statuses.count(200) > 0
    assert all(a.body["retry-after"] == "1" and "overloaded" in a.body["error"] for a in shed)
    assert httpx.get(f"{url}/v1/stats").json()["reliability"]["shed_requests"] - shed_before == len(shed)
    print(f"\noverload: {len(statuses)} requests from 12 clients at max_in_flight 4: {len(shed)} shed with 429 + Retry-After, rest 200")
