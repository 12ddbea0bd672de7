"""Ray Serve's fast path (HAProxy, direct ingress, gRPC between deployments) is what `cascade
serve`, deploy/serve.yaml and the RayService ship: its settings, the gRPC message limit checked
at validation, ports checked before Ray starts, and a clean stop (slow tests: no HAProxy left
after Ctrl-C or kill -9 of `cascade serve`, its stats and metrics on loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ports import free_port
from serving.config import GRPC_MESSAGE_LIMIT, CascadeConfig, ConfigError, load_config
from serving.serve_config import KubeRayOptions, builder_args, rayservice, render, serve_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_fast_path_is_the_default():
    env = CascadeConfig().proxy.ray_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("8404", "9101")
    slow = CascadeConfig.model_validate({"proxy": {"kind": "serve"}}).proxy.ray_env()
    assert slow == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}


def test_request_limits_keep_calls_between_deployments_under_grpc_limit(tmp_path):
    assert CascadeConfig().limits.call_bytes() < GRPC_MESSAGE_LIMIT
    config = tmp_path / "cascade.yaml"
    config.write_text("limits: {max_body_bytes: 4194304}\n")
    with pytest.raises(ConfigError, match=r"limits.max_body_bytes \(4194304\).*Ray issue 62982.*proxy.kind: serve"):
        load_config(config)
    config.write_text("limits: {max_body_bytes: 4194304}\nproxy: {kind: serve}\n")  # the Python proxy has no such limit
    assert load_config(config).limits.max_body_bytes == 4194304
    # many short texts: the body caps the texts, but each still costs its envelope
    many = {"limits": {"max_items": 40_000, "max_text_chars": 10, "max_body_bytes": 2 * 1024 * 1024}}
    with pytest.raises(ValueError, match="limits.max_items"):
        CascadeConfig.model_validate(many)


def test_two_listeners_on_one_port_are_refused():
    with pytest.raises(ValueError, match="proxy.stats_port and port are both 8000"):
        CascadeConfig.model_validate({"port": 8000, "proxy": {"stats_port": 8000}})
    assert CascadeConfig.model_validate({"port": 8404, "proxy": {"kind": "serve"}}).port == 8404  # no HAProxy: no clash


def test_deploy_files_start_ray_on_the_fast_path():
    config = load_config(ROOT / "deploy/kuberay/cascade.yaml")
    manifest = rayservice(config, KubeRayOptions())
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env[k] for k in config.proxy.ray_env()} == config.proxy.ray_env()
    served = load_config(ROOT / "deploy/cascade.yaml")
    header = (ROOT / "deploy/serve.yaml").read_text().split("\nproxy_location", 1)[0]
    assert " ".join(f"{k}={v}" for k, v in served.proxy.ray_env().items()) in header
    # the proxy is the cluster's, not the application's: Serve's `args` never carry it
    chosen = CascadeConfig.model_validate({"proxy": {"kind": "serve"}, "routing": {"threshold": 0.5}})
    assert "proxy" not in builder_args(chosen) and builder_args(chosen)["routing"] == {"threshold": 0.5}
    assert "RAY_SERVE_ENABLE_HA_PROXY=0" in render(serve_config(chosen), "cascade x", chosen.proxy.ray_env())


@pytest.mark.parametrize("field", ["proxy.stats_port", "proxy.metrics_port", "port"])
def test_a_taken_port_is_named_before_ray_starts(tmp_path: Path, field: str):
    import ray

    from serving.cli import runner

    assert not ray.is_initialized()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"port": free_port(), "proxy": {"stats_port": free_port(), "metrics_port": free_port()}}
        section, _, name = field.rpartition(".")
        if section:
            ports[section][name] = port
        else:
            ports[name] = port
        config = CascadeConfig.model_validate({"home": str(tmp_path), "metrics": {"port": free_port()}, **ports})
        with pytest.raises(ConfigError, match=rf"^{field}: port {port} is in use"):
            runner.start(config)
    assert not ray.is_initialized()


def _listeners(port: int) -> set[str]:
    """The local addresses a TCP port listens on (from /proc/net/tcp, IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _session_haproxies(session_id: int) -> list[int]:
    """Live haproxy processes of a session (`cascade serve` runs in its own, with its Ray)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError):
            continue
        fields = rest.split()
        if name == "haproxy" and int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_cascade_serve_leaves_no_haproxy(tiny_home: Path, tmp_path: Path, how: str):
    """`cascade serve` on the fast path: stats and metrics on loopback; after Ctrl-C or kill -9
    of the CLI, no HAProxy of it is left and its ports are free again."""
    ports = {"port": free_port(), "stats_port": free_port(), "metrics_port": free_port()}
    config = tmp_path / "cascade.yaml"
    config.write_text(yaml.safe_dump({
        "home": str(tiny_home), "port": ports["port"], "metrics": {"port": free_port()},
        "log": {"path": str(tmp_path / "escalations")},
        "feedback": {"traffic_path": str(tmp_path / "traffic"), "path": str(tmp_path / "feedback")},
        "proxy": {"stats_port": ports["stats_port"], "metrics_port": ports["metrics_port"]},
    }))
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--config", str(config), "-q"],
                               cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "cascade serving at" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        assert _session_haproxies(process.pid)
        assert _listeners(ports["stats_port"]) == {"127.0.0.1"} and _listeners(ports["metrics_port"]) == {"127.0.0.1"}
        base = f"http://127.0.0.1:{ports['port']}"
        assert httpx.post(f"{base}/v1/classify", json={"inputs": "play some jazz"}, timeout=30).status_code == 200
        process.send_signal(signal.SIGINT) if how == "ctrl-c" else process.kill()
        assert process.wait(timeout=90) == (0 if how == "ctrl-c" else -signal.SIGKILL), log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while _session_haproxies(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_haproxies(process.pid) == []
        assert all(not _listeners(port) for port in ports.values()), ports
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the session holds only what this test started (Ray's agents)
        except ProcessLookupError:
            pass
        process.wait()
