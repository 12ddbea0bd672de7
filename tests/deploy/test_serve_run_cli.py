"""The real `serve run` CLI starts the cascade from a Serve config file written by
`cascade export-serve-config` (the generator of deploy/serve.yaml), pointed at the tiny test
home and a free port; it answers /v1/classify, `serve deploy` of a changed file updates it in
place, and it stops cleanly on Ctrl-C, its Ray with it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from distill.registry import Registry
from serving.cli import main
from ports import free_port

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 300  # a fresh Ray, then four deployments, on two shared cores
# `serve deploy` reaches the cluster through its dashboard, which by default asks for the
# cluster's token; this throwaway local cluster opts out instead of sharing a token file
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def serving_settings(port: int, work: Path) -> dict:
    """The test cascade's serving config; the home comes from $CASCADE_HOME."""
    return {"port": port, "routing": {"threshold": 0.9, "audit_rate": 0.0}, "log": {"path": str(work / "escalations")},
            "feedback": {"traffic_path": str(work / "traffic"), "path": str(work / "feedback")}}


def write_serve_config(work: Path, name: str, settings: dict) -> Path:
    """A Serve config file from serving settings, through the CLI that writes deploy/serve.yaml."""
    source, config_file = work / f"{name}.cascade.yaml", work / f"{name}.serve.yaml"
    source.write_text(yaml.safe_dump(settings))
    assert main(["export-serve-config", "--config", str(source), "--out", str(config_file)]) == 0
    return config_file


def session_processes(session_id: int) -> list[str]:
    """'pid name' of every live process in a session (the serve CLI's, with its Ray)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":  # fields[0] is the state, [3] the session
            found.append(f"{stat.parent.name} {(stat.parent / 'comm').read_text().strip()}")
    return found


def _default_sigint() -> None:
    """Let Python in the child raise KeyboardInterrupt on SIGINT even when this test runs with
    SIGINT ignored (a background job), as `serve run` only stops on KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def serve_run(tiny_home: Path, tmp_path_factory):
    """`serve run FILE` in its own session; yields (base URL, process, work directory). Like
    the committed deploy/serve.yaml, the file names no home: $CASCADE_HOME gives it."""
    work = tmp_path_factory.mktemp("serve-run")
    port = free_port()
    config_file = write_serve_config(work, "first", serving_settings(port, work))
    assert "home" not in yaml.safe_load(config_file.read_text())["applications"][0]["args"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"CASCADE_HOME": str(tiny_home)} | NO_TOKEN  # a local Ray of its own
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(config_file)],
        cwd=work, env=env, stdout=(work / "serve.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=_default_sigint,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, f"serve run exited early:\n{(work / 'serve.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready within {READY_TIMEOUT_S} s:\n{(work / 'serve.log').read_text()[-3000:]}"
            time.sleep(1)
        yield url, process, work
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the session holds only what this test started
                process.wait()


def test_serve_run_answers_classify(serve_run, tiny_data, tiny_home):
    url, _, _ = serve_run
    labels = json.loads((tiny_data / "labels.json").read_text())
    response = httpx.post(f"{url}/v1/classify", json={"inputs": ["play some jazz", "wake me up at 7 am"]}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["music", "alarm"]
    assert all(p["label"] in labels and p["tier"] in ("student", "teacher") for p in predictions)
    registry = Registry(tiny_home / "registry")  # the models of $CASCADE_HOME
    assert response.json()["versions"] == {"student": registry.current("student"), "teacher": registry.current("teacher")}
    bad = httpx.post(f"{url}/v1/classify", json={"inputs": []}, timeout=30)
    assert bad.status_code == 422 and "error" in bad.json()


def test_serve_deploy_updates_the_running_app(serve_run):
    url, _, work = serve_run
    dashboard = re.search(r"dashboard at \S*(http://[\d.]+:\d+)", (work / "serve.log").read_text())
    assert dashboard, "serve run did not report its dashboard"
    port = int(url.rsplit(":", 1)[1])
    changed = write_serve_config(work, "second", serving_settings(port, work) | {"limits": {"max_items": 3}})
    deploy = subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "deploy", "--address", dashboard.group(1), str(changed)],
        env=os.environ | NO_TOKEN, capture_output=True, text=True, timeout=120,
    )
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    deadline = time.monotonic() + 120
    while True:  # the ingress restarts with the new limits; the proxy may refuse meanwhile
        try:
            response = httpx.post(f"{url}/v1/classify", json={"inputs": ["play jazz"] * 4}, timeout=30)
            if response.status_code == 413:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "serve deploy did not apply max_items: 3"
        time.sleep(1)
    assert "at most 3" in response.json()["error"]
    assert httpx.post(f"{url}/v1/classify", json={"inputs": ["play jazz"] * 3}, timeout=30).status_code == 200


def test_ctrl_c_stops_serve_run_and_its_ray(serve_run):
    url, process, work = serve_run
    assert len(session_processes(process.pid)) > 3  # the CLI, and the Ray it started: gcs, raylet, workers
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0, (work / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 30
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert session_processes(process.pid) == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)
