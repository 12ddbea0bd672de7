"""A real cascade on Ray Serve, scraped by a real Prometheus server through the shipped scrape
config, and its /dashboard rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from distill.registry import Registry
from serving.config import CascadeConfig
from serving.guards import FEEDBACK_TOKEN_ENV
from ports import free_port
from waiting import wait_until

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IN_DOMAIN = ["set an alarm for 7 am", "play some jazz", "what is my account balance", "send 50 dollars to my brother"]
ODD = ["zebra quantum pancake", "the of and a", "purple", "music alarm weather balance", "yes"]  # some are unsure
FEEDBACK_TOKEN = "metrics-feedback-token"


def send_feedback(url: str, answers: list[dict]) -> Counter:
    """Feedback on every item answered: every other one says the answer was right, the rest
    name another label. Returns the items sent by (outcome, tier)."""
    labels = httpx.get(f"{url}/v1/models", timeout=30).json()["labels"]
    items, sent = [], Counter()
    for answer in answers:
        for i, prediction in enumerate(answer["predictions"]):
            right = i % 2 == 0
            label = prediction["label"] if right else next(lb for lb in labels if lb != prediction["label"])
            items.append({"request_id": answer["request_id"], "index": i, "label": label})
            sent[("correct" if right else "wrong", prediction["tier"])] += 1
    response = httpx.post(f"{url}/v1/feedback", json={"items": items}, headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"}, timeout=30)
    assert response.status_code == 200 and response.json()["recorded"] == len(items), response.text
    return sent


@pytest.fixture(scope="module")
def live(tiny_home: Path, tmp_path_factory) -> tuple[CascadeConfig, str]:
    """One cascade for this module, reporting metrics every second on a known port."""
    import ray

    from serving.cli import runner

    assert not ray.is_initialized(), "this module starts its own Ray cluster with a known metrics port"
    home = tmp_path_factory.mktemp("metrics-live") / "home"
    shutil.copytree(tiny_home, home)  # refresh events are recorded into its registry below, not into the session's home
    config = CascadeConfig.model_validate({
        "home": str(home),
        "port": free_port(),
        "routing": {"threshold": 0.9, "audit_rate": 0.3, "control": False},  # a fixed threshold keeps "unsure" deterministic
        "log": {"path": str(tmp_path_factory.mktemp("escalations"))},
        "feedback": {"traffic_path": str(tmp_path_factory.mktemp("traffic")), "path": str(tmp_path_factory.mktemp("feedback"))},
        "metrics": {"port": free_port(), "report_interval_s": 1.0, "refresh_poll_s": 0.5, "history_every_s": 1.0},
    })
    os.environ[FEEDBACK_TOKEN_ENV] = FEEDBACK_TOKEN  # read by the ingress at start
    try:
        url = runner.start(config, num_cpus=2)
        yield config, url
        runner.stop()
    finally:
        del os.environ[FEEDBACK_TOKEN_ENV]


@pytest.fixture(scope="module")
def prometheus(live, tmp_path_factory) -> str:
    """Prometheus scraping the cascade's metrics port every second, with the shipped relabelling and alert rules."""
    config, _ = live
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install Debian's prometheus package (.ci/run does)"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scrape["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    scrape["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    scrape["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{config.metrics.port}"]}]
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address={address}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(work / "prometheus.log").open("w"),
    )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (work / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def classify(url: str, texts: list[str], mode: str = "cascade") -> dict:
    answer = httpx.post(f"{url}/v1/classify", json={"inputs": texts, "options": {"mode": mode}}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def promql(prometheus: str, query: str) -> dict[tuple, float]:
    """An instant query's result: label values (sorted by label name) -> value."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    assert answer["status"] == "success", answer
    return {tuple(v for _, v in sorted(r["metric"].items())): float(r["value"][1]) for r in answer["data"]["result"]}


def settled(prometheus: str, query: str, expected: float, timeout_s: float = 40.0) -> float:
    """Wait until ``sum(query)`` reaches ``expected`` (replicas report every second, Prometheus
    scrapes every second); return what it last was."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = sum(promql(prometheus, query).values())
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_prometheus_counts_exactly_the_traffic_sent(live, prometheus):
    config, url = live
    answers = [classify(url, IN_DOMAIN + ODD) for _ in range(3)]
    answers += [classify(url, IN_DOMAIN[:3], mode="teacher") for _ in range(2)]
    answers += [classify(url, ODD, mode="student") for _ in range(2)]
    predictions = [p for a in answers for p in a["predictions"]]
    cascade_items = [p for a in answers[:3] for p in a["predictions"]]
    unsure = sum(p["reason"] == "unsure" for p in cascade_items)
    audits = sum(p["reason"] == "audit" for p in cascade_items)
    assert unsure == sum(p["confidence"] < 0.9 for p in cascade_items) and unsure > 0  # the known escalations

    assert settled(prometheus, "sum(cascade_requests_total)", 7) == 7
    assert promql(prometheus, "sum by (mode) (cascade_requests_total)") == {("cascade",): 3, ("student",): 2, ("teacher",): 2}
    escalations = promql(prometheus, "sum by (reason) (cascade_escalations_total)")
    assert escalations.get(("forced",)) == 6  # 2 requests x 3 texts in mode teacher
    assert escalations.get(("unsure",)) == unsure
    assert ("audit",) not in escalations  # an audit is not an escalation: the policy did not want the teacher's answer
    consulted = promql(prometheus, "sum by (reason) (cascade_teacher_consulted_total)")
    assert consulted == {k: v for k, v in {("forced",): 6, ("unsure",): unsure, ("audit",): audits}.items() if v}
    tiers = promql(prometheus, "sum by (mode, tier) (cascade_items_total)")
    assert tiers == {
        ("cascade", "student"): sum(p["tier"] == "student" for p in cascade_items),
        ("cascade", "teacher"): unsure,
        ("teacher", "teacher"): 6,
        ("student", "student"): 2 * len(ODD),
    }
    assert promql(prometheus, "sum(cascade_cost_units_total)")[()] == sum(a["cost"] for a in answers)
    cost_by_tier = promql(prometheus, "sum by (tier) (cascade_cost_units_total)")
    assert cost_by_tier[("teacher",)] == config.routing.teacher_cost * (unsure + audits + 6)
    assert settled(prometheus, "sum(cascade_log_records_total)", sum(a["logged"] for a in answers)) == unsure + audits + 6
    assert promql(prometheus, "sum(cascade_log_bytes_total)")[()] > 0
    assert sum(promql(prometheus, "sum(cascade_audits_total)").values()) == audits
    assert promql(prometheus, "sum(cascade_request_latency_seconds_count)")[()] == 7
    # the teacher was called once per request that sent it anything
    teacher_calls = sum(any(p["tier"] == "teacher" or p["reason"] == "audit" for p in a["predictions"]) for a in answers)
    assert promql(prometheus, 'sum(cascade_tier_latency_seconds_count{tier="teacher"})')[()] == teacher_calls
    assert promql(prometheus, "sum(cascade_student_confidence_ratio_count)")[()] == len(cascade_items)
    versions = answers[0]["versions"]
    served = promql(prometheus, "max by (role, version) (cascade_model_info)")
    assert served == {("student", versions["student"]): 1, ("teacher", versions["teacher"]): 1}
    assert not promql(prometheus, "ray_cascade_requests_total")  # stored under the cascade_ names only
    assert len(predictions) == 3 * len(IN_DOMAIN + ODD) + 6 + 2 * len(ODD)


def test_prometheus_counts_feedback_by_tier_and_outcome(live, prometheus):
    _, url = live
    query = "sum by (outcome, tier) (cascade_feedback_items_total)"
    before = promql(prometheus, query)
    sent = send_feedback(url, [classify(url, IN_DOMAIN + ODD), classify(url, IN_DOMAIN[:2], mode="teacher")])
    settled(prometheus, "sum(cascade_feedback_items_total)", sum(before.values()) + sum(sent.values()))
    after = promql(prometheus, query)
    assert {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)} == dict(sent)
    assert sent[("correct", "teacher")] > 0 and sent[("wrong", "student")] > 0


def test_refresh_rounds_recorded_by_another_process_are_counted_once(live, prometheus):
    config, _ = live
    registry = Registry(config.home / "registry")
    registry.record("student", {"event": "gate", "version": "student-test", "promoted": False, "reasons": ["test"]})
    registry.record("student", {"event": "refresh_failed", "error": "DataError: test"})
    assert settled(prometheus, 'cascade_refresh_runs_total{outcome="rejected"}', 1) == 1
    assert settled(prometheus, 'cascade_refresh_runs_total{outcome="failed"}', 1) == 1
    assert "promoted" not in {k[-1] for k in promql(prometheus, "sum by (outcome) (cascade_refresh_runs_total)")}


def test_alert_rules_load_and_grafana_queries_run(prometheus):
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"][0]["rules"]
    assert len(rules) == 7 and all(r["health"] == "ok" for r in rules)
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "cascade.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql(prometheus, target["expr"].replace("$__rate_interval", "1m"))  # valid PromQL, or it fails


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium not found: install Debian's chromium package (.ci/run does)"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--window-size=1400,1000", "--virtual-time-budget=20000", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_dashboard_charts_live_figures_in_chromium(live, tmp_path):
    _, url = live
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                mode = "teacher" if i % 5 == 0 else "cascade"
                client.post(f"{url}/v1/classify", json={"inputs": IN_DOMAIN + ODD, "options": {"mode": mode}})

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    def history_feedback() -> list[float]:
        """The feedback items counted in each of the server's history samples (cumulative)."""
        return [sum(s["feedback"].values()) for s in httpx.get(f"{url}/dashboard/history", timeout=30).json()]

    try:
        counted = max(history_feedback(), default=0)
        sent = sum(send_feedback(url, [classify(url, IN_DOMAIN + ODD), classify(url, ODD, mode="teacher")]).values())
        # the page opens on the server's history: three samples (one a second) that count this
        # feedback, amid the traffic, put its first rate point at least 2 s before it opens
        wait_until(lambda: sum(n >= counted + sent for n in history_feedback()) >= 3, 60,
                   "three samples of the dashboard history that count the feedback just sent")
        opened = time.time()
        page = f"{url}/dashboard?every=1&window=10"
        screenshot = Path(os.environ.get("CASCADE_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
        shot = chromium(f"--screenshot={screenshot}", page, profile=tmp_path / "profile-shot")
        dom = chromium("--dump-dom", page, profile=tmp_path / "profile-dom").stdout
    finally:
        stop.set()
        sender.join(timeout=60)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    points = {m[0]: (int(m[1]), m[2]) for m in re.findall(r'class="series" data-series="([^"]+)" data-points="(\d+)" data-latest="([^"]*)"', dom)}
    for series in ("cost / 1,000", "teacher share", "requests/s", "texts/s", "student p50", "student p99",
                   "teacher p50", "teacher p99", "end-to-end p50", "end-to-end p99", "agreement"):
        assert points[series][0] >= 2, f"{series}: {points[series]}"
    assert float(points["texts/s"][1]) > 0 and 0 < float(points["teacher share"][1]) <= 100
    for series in ("student accuracy", "teacher accuracy"):  # fed back above, from the Prometheus counters
        assert points[series][0] >= 2 and 0 <= float(points[series][1]) <= 100, f"{series}: {points[series]}"
    first = {m[0]: float(m[1]) for m in re.findall(r'class="series" data-series="([^"]+)"[^>]*data-first="([\d.]+)"', dom)}
    assert first["requests/s"] < opened - 2, "the charts open on the server's recent past"
    tiers = dict(re.findall(r'<tr data-tier="(student|teacher)"><td>\w+</td><td>(\d+)</td>', dom))
    stats = httpx.get(f"{url}/v1/stats").json()["feedback"]
    assert int(tiers["student"]) <= stats["student"]["items"] and int(tiers["teacher"]) > 0  # the table of /v1/stats
    assert float(points["cost / 1,000"][1]) >= 1000  # at least one student unit per text
    assert dom.count("<polyline") >= 11
    assert re.search(r'class="version">student-', dom) and re.search(r'class="version">teacher-', dom)
