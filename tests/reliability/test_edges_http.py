"""The real application at its edges where Ray Serve takes part: the body cap and a hostile body
(nested 50,000 levels deep) through the proxy, feedback across an ingress restart and over
real models, promotions reaching the model servers, redaction in the log, a full disk under the
escalation log, and shedding past the in-flight bound under real concurrency. One Ray Serve
application for the module.

What only the HTTP layer decides (every status and its message, bad and hostile bodies on every
route, the fuzz runs, the admin token) is tested without Ray, over the same FastAPI app, in
``tests/serving/test_http_edges.py``."""

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

from fault_tools import IN_DOMAIN, ODD, Load, reliability_config, replica_pids, restart_ingress_replicas, running_cascade, wait_ready
from distill.data import load_splits
from distill.escalations import read_records
from distill.feedback import read_feedback
from distill.registry import Registry

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token-7"
FEEDBACK_TOKEN = "test-feedback-token-3"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
MAX_BODY = 128 * 1024  # above the 100 KB of the deeply nested body
DEEP = 50_000


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
        home, log_dir[0], limits={"max_body_bytes": MAX_BODY}, ingress={"max_in_flight": 4},
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


def test_the_body_cap_holds_through_the_proxy(app):
    """A body of exactly max_body_bytes is read; one byte more is a JSON 413, with a
    Content-Length and without one (the proxy streams it in chunks)."""
    body = json.dumps({"inputs": "play some jazz"}).encode()
    at_cap = body + b" " * (MAX_BODY - len(body))
    response = post(app[0], "/v1/classify", content=at_cap, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    response = post(app[0], "/v1/classify", content=at_cap + b" ", headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json() == {"error": f"request body: more than {MAX_BODY} bytes"}
    chunks = iter([b'{"inputs": "', b"x" * MAX_BODY, b'"}'])
    response = post(app[0], "/v1/classify", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["error"]


def test_a_deeply_nested_body_is_a_json_4xx_through_ray_serve(app):
    """100 KB of brackets, under every limit: it was a plain-text 500 (RecursionError in the
    ingress replica). Every other hostile body is tested without Ray (test_http_edges.py)."""
    deep = b"[" * DEEP + b"]" * DEEP
    response = post(app[0], "/v1/classify", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "nested too deeply" in response.json()["error"], response.text
    assert httpx.get(f"{app[0]}/readyz").status_code == 200  # the replica is unharmed


def classified(url: str, texts: list[str], **options) -> dict:
    response = httpx.post(f"{url}/v1/classify", json={"inputs": texts, "options": options}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


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
    record = read_feedback(config.paths().feedback)[(answer["request_id"], 0)]
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


def test_promotion_and_rollback_reach_the_model_servers(app):
    """Admin calls move the registry's pointer and reload makes the model servers (Ray replicas)
    serve it at once. The token and every refusal are tested without Ray (test_http_edges.py)."""
    url, config = app
    registry = Registry(config.home / "registry")
    current = registry.current("student")
    other = registry.derive("student", current).version
    response = post(url, "/v1/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and "error" in response.json()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    promoted = post(url, "/v1/admin/promote", json={"version": other}, headers=auth)
    assert promoted.status_code == 200 and promoted.json() == {"role": "student", "current": other, "previous": current}
    assert post(url, "/v1/admin/reload", headers=auth).json()["student"] == other
    assert httpx.post(f"{url}/v1/classify", json={"inputs": "play some jazz"}).json()["versions"]["student"] == other
    rolled = post(url, "/v1/admin/rollback", json={"role": "student"}, headers=auth)
    assert rolled.status_code == 200 and rolled.json()["current"] == current
    assert post(url, "/v1/admin/reload", headers=auth).json()["student"] == current
    assert httpx.post(f"{url}/v1/classify", json={"inputs": "play some jazz"}).json()["versions"]["student"] == current


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
