"""`cascade bench` end to end on the tiny data set, through the real command in its own process:
every service measured over HTTP, the checks the issue names, and the paired echo/cascade runs
with each Serve process's CPU per request."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ports import free_port
from serving.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tiny_home: Path, tiny_data: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bench")
    config = work / "cascade.yaml"
    # no audits: the cascade's teacher share is then exactly what its fitted policy escalates, as eval computes it
    config.write_text(json.dumps({"metrics": {"port": free_port()}, "log": {"path": str(work / "escalations")},
                                  "feedback": {"traffic_path": str(work / "traffic"), "path": str(work / "feedback")}, "routing": {"audit_rate": 0.0},
                                  "proxy": {"stats_port": free_port(), "metrics_port": free_port()}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "bench", "--home", str(tiny_home), "--data", str(tiny_data), "--config", str(config),
         "--port", str(free_port()), "--seconds", "2", "--pairs", "2", "--json", "--out", str(work / "bench.md")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout) | {"table": (work / "bench.md").read_text()}


@pytest.fixture(scope="module")
def offline(tiny_home: Path, tiny_data: Path) -> dict:
    """`cascade eval --json` on the bench's models and split (test), in process: what the HTTP
    figures must match."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", "--home", str(tiny_home), "--data", str(tiny_data), "--json", "-q"]) == 0
    return json.loads(out.getvalue())


def test_every_service_is_measured_over_http(report, offline):
    services = report["services"]
    assert set(services) == {"echo", "student", "teacher", "cascade"}
    for name, result in services.items():
        assert result["batch_texts_per_s"] > 0
        for clients in (1, 16):
            assert result[f"single_{clients}"]["requests_per_s"] > 0 and result[f"single_{clients}"]["errors"] == 0
    # over HTTP each service answers the test split as `cascade eval` finds its models do in process
    for name in ("student", "teacher", "cascade"):
        assert services[name]["accuracy"] == offline[name]["accuracy"], name
    # in process the student outpaces the teacher, and the cascade (student, plus the teacher on its share) is no faster than the student
    student_only, teacher_only, cascade = (services[name]["model_only_texts_per_s"] for name in ("student", "teacher", "cascade"))
    assert student_only > teacher_only and cascade <= student_only
    assert services["teacher"]["teacher_share"] == 1.0 and services["student"]["teacher_share"] == 0.0
    # the cascade sends the teacher the share the student's fitted policy escalates, at the cost that share makes
    assert services["cascade"]["teacher_share"] == offline["cascade"]["escalation_rate"]
    assert services["cascade"]["cost_per_1000"] == pytest.approx(offline["cascade"]["cost_per_1000"], abs=0.1)
    for name in services:
        assert f"| {name} |" in report["table"]
    # without audits control is off: one pass warms nothing, and the table says so
    assert services["cascade"]["control"] == {"passes": 1, "live": None}
    assert "control off" in report["table"]


def test_cpu_per_text_and_the_bound_it_puts_on_the_cascade(report):
    services, checks = report["services"], report["checks"]
    assert set(services["echo"]["batch_cpu_ms_per_text"]) == {"proxy", "Echo", "client"}
    for name in ("student", "teacher", "cascade"):
        assert set(services[name]["batch_cpu_ms_per_text"]) == {"proxy", "Ingress", "Teacher", "client"}, name
        assert services[name]["batch_cpu_ms_per_text"]["client"] > 0, name
    # a teacher-only pass spends teacher CPU on every text, a student-only pass none worth a forward pass
    assert services["teacher"]["batch_cpu_ms_per_text"]["Teacher"] > services["student"]["batch_cpu_ms_per_text"]["Teacher"]
    assert services["cascade"]["consulted_share"] >= services["cascade"]["teacher_share"]
    student = sum(services["student"]["batch_cpu_ms_per_text"].values())
    teacher = services["teacher"]["batch_cpu_ms_per_text"]["Teacher"]
    assert checks["cascade_over_student_batch_bound"] == pytest.approx(
        student / (student + services["cascade"]["consulted_share"] * teacher), abs=0.01)
    assert 0 < checks["cascade_over_student_batch_bound"] <= 1
    assert f"| {checks['cascade_over_student_batch_bound']:.2f} | |" in report["table"]


def test_checks_and_pairs_with_cpu_per_request(report):
    checks, paired = report["checks"], report["paired_single_16"]
    assert checks["cascade_accuracy_minus_teacher"] == pytest.approx(
        report["services"]["cascade"]["accuracy"] - report["services"]["teacher"]["accuracy"], abs=1e-4)
    assert len(paired["ratios"]) == 2 and checks["cascade_over_echo_single_16"] == paired["median"]
    services = report["services"]
    assert checks["cascade_over_student_batch_texts"] == pytest.approx(
        services["cascade"]["batch_texts_per_s"] / services["student"]["batch_texts_per_s"], abs=0.01)
    for name, target in (("cascade_over_student_batch_texts", "≥ 0.5"), ("cascade_over_echo_single_16", "≥ 0.5")):
        assert f"| {checks[name]:.2f} | {target} |" in report["table"], name
    # echo runs on the proxy and its own replica; the cascade on the proxy, the ingress and the teacher
    assert set(paired["cpu_ms_per_request"]["echo"]) == {"proxy", "Echo"}
    assert set(paired["cpu_ms_per_request"]["cascade"]) == {"proxy", "Ingress", "Teacher"}
    assert paired["cpu_ms_per_request"]["cascade"]["Ingress"] > 0 and paired["cpu_ms_per_request"]["echo"]["Echo"] > 0
    totals = paired["cpu_ms_per_request_total"]
    assert paired["cpu_ratio"] == pytest.approx(totals["echo"] / totals["cascade"], abs=0.01)
    assert f"CPU ratio (echo total / cascade total): {paired['cpu_ratio']:.2f}." in report["table"]


def test_both_paths_side_by_side(report):
    paths, paired = report["paths"], report["paired_single_16"]
    assert set(paths) == {"haproxy", "serve"}  # the config's (HAProxy, the default) and the other
    for kind, path in paths.items():
        for name in ("echo", "cascade"):
            assert path[name]["requests_per_s"] > 0 and path[name]["p99_ms"] >= path[name]["p50_ms"] > 0
            assert path[name]["errors"] == 0, (kind, name)
        assert path["cascade"]["batch_texts_per_s"] > 0
        assert f"| {kind} | {path['echo']['requests_per_s']:.0f} |" in report["table"]
    # the config's own path is the pairs measured with every service
    assert paths["haproxy"]["ratio"] == paired["median"]
    assert paths["haproxy"]["echo"] == paired["runs"]["echo"] and paths["haproxy"]["cascade"]["p99_ms"] == paired["runs"]["cascade"]["p99_ms"]
