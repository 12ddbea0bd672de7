"""The shipped Prometheus config, alert rules and Grafana dashboard are valid and name only
metrics that ``serving/metrics.py`` defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from serving.metrics import SPECS, series_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana" / "cascade.json"
METRIC_NAME = re.compile(r"\bcascade_[a-z0-9_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, cwd=PROMETHEUS, timeout=60)


def test_promtool_accepts_the_scrape_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_the_issue_and_name_known_metrics():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "CascadeTeacherShareAboveBudget", "CascadeAuditAgreementLow", "CascadeLatencyP99AboveSLO", "CascadeGoalNotHeld", "CascadeGoalBudgetLimited",
        "CascadeRefreshFailed", "CascadeEscalationLogWriteErrors",
    }
    for rule in rules:
        assert set(METRIC_NAME.findall(rule["expr"])) <= series_names(), rule["alert"]


def test_scrape_config_renames_rays_prefix_to_cascade():
    job = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]
    rename = job["metric_relabel_configs"][0]
    assert re.fullmatch(rename["regex"], "ray_cascade_items_total")
    assert re.sub(rename["regex"], rename["replacement"].replace("$1", r"\1"), "ray_cascade_items_total") == "cascade_items_total"
    assert not re.fullmatch(rename["regex"], "ray_serve_num_http_requests_total")  # Ray's own metrics keep their names


def test_grafana_dashboard_is_valid_json_and_queries_only_defined_metrics():
    dashboard = json.loads(GRAFANA.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in ("Cost per 1,000 texts", "Teacher share", "Throughput", "Latency p50 / p99 by tier (one model call)",
                   "Latency p50 / p99 end to end", "Audit agreement", "Model versions over time"):
        assert wanted in titles
    known = series_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC_NAME.findall(target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} names no cascade metric"
            assert names <= known, f"{panel['title']}: unknown {names - known}"
            used |= names
    assert {"cascade_cost_units_total", "cascade_model_info", "cascade_tier_latency_seconds_bucket"} <= used


def test_metric_names_follow_prometheus_conventions():
    for name, spec in SPECS.items():
        assert name.startswith("cascade_") and re.fullmatch(r"[a-z_]+", name)
        assert name.endswith("_total") == (spec.kind == "counter"), name
        if spec.kind == "histogram":
            assert spec.buckets == tuple(sorted(spec.buckets)) and spec.buckets[0] > 0, name
    assert "cascade_shed_requests_total" in SPECS and "cascade_log_write_errors_total" in SPECS
