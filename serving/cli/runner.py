"""Start and stop the cascade on a local Ray cluster (used by ``cascade serve``, bench, soak and
the tests).

On the fast path (``proxy.kind: haproxy``) Ray reads every HAProxy setting from its processes'
environment, so ``start`` sets it before ``ray.init`` (the Ray processes keep it; this process
gets its own back at once). Each start gives HAProxy its own directory for its config, sockets
and state, and its own binary: a wrapper that binds the stats page and the Prometheus exporter to
``proxy.admin_host`` and makes HAProxy die with the Ray worker that runs it, so no HAProxy outlives
its cluster, whether that stops by ``stop``, Ctrl-C or kill -9 of this process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from serving.app import build_app
from serving.config import CascadeConfig, ConfigError

# HAProxy takes unix socket paths of at most 97 bytes, and Ray puts them in a 56-character
# node-id directory under the one given: /tmp/cascade-XXXXXXXX/<node id>/metrics.sock is 91
HAPROXY_DIR_PREFIX = "cascade-"

# Ray renders `bind *:<stats port>` and `bind :<metrics port>` (ray/serve/_private/haproxy_templates.py);
# the wrapper rebinds both, and refuses to start HAProxy when it finds neither, so that a Ray whose
# template changed fails at start-up instead of exposing them.
_WRAPPER = """#!/bin/sh
# HAProxy as `cascade serve` starts it through Ray Serve: stats and metrics listeners on {host},
# and SIGKILL when the Ray worker that started it dies (setpriv --pdeathsig).
config=""; previous=""
for arg in "$@"; do [ "$previous" = "-f" ] && config="$arg"; previous="$arg"; done
sed -i -e 's/^\\( *\\)bind \\*:{stats}$/\\1bind {host}:{stats}/' -e 's/^\\( *\\)bind :{metrics}$/\\1bind {host}:{metrics}/' "$config" || exit 1
if [ "$(grep -c -e '^ *bind {host}:{stats}$' -e '^ *bind {host}:{metrics}$' "$config")" != 2 ]; then
    echo "cascade: found no stats/metrics bind lines to move to {host} in $config (has Ray's HAProxy template changed?)" >&2
    exit 1
fi
exec setpriv --pdeathsig KILL -- {binary} "$@"
"""

_haproxy_dir: Path | None = None  # the running fast path's HAProxy directory, which stop() clears


def start(config: CascadeConfig, num_cpus: float | None = None, ready_timeout_s: float = 120.0) -> str:
    """Start Ray (if needed) and the application; return the base URL once ``/readyz`` answers.
    A port the config names that is taken fails at once, naming the field to change."""
    global _haproxy_dir
    if not ray.is_initialized():
        _check_ports(config)
        env = config.proxy.ray_env()
        if config.proxy.kind == "haproxy":
            _haproxy_dir = Path(tempfile.mkdtemp(prefix=HAPROXY_DIR_PREFIX, dir="/tmp"))
            env |= _haproxy_files(_haproxy_dir, config)
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                configure_logging=True,
                logging_level="WARNING",
                log_to_driver=False,
                _metrics_export_port=config.metrics.port,
                _system_config={"metrics_report_interval_ms": int(config.metrics.report_interval_s * 1000)},
            )
        finally:  # the Ray processes keep the environment they started with
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cascade did not become ready at {url} within {ready_timeout_s:.0f} s")
        time.sleep(0.5)


def _check_ports(config: CascadeConfig) -> None:
    """Every port this start binds, free, or a ConfigError naming the field to change."""
    ports = {"metrics.port": config.metrics.port, "port": config.port}
    if config.proxy.kind == "haproxy":
        ports |= {"proxy.stats_port": config.proxy.stats_port, "proxy.metrics_port": config.proxy.metrics_port}
    for field, port in ports.items():
        _check_free(port, field)


def _check_free(port: int, field: str) -> None:
    """Fail early with the config field to change: Ray's node start-up only times out after
    half a minute when its metrics export port is taken, and HAProxy's after its own retries."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as err:
            raise ConfigError(f"{field}: port {port} is in use ({err.strerror}); choose another in the config file") from None


def _haproxy_files(directory: Path, config: CascadeConfig) -> dict[str, str]:
    """The environment that puts HAProxy's files in ``directory`` and starts it through the wrapper."""
    from ray.serve._private.haproxy import get_haproxy_binary

    if shutil.which("setpriv") is None:
        raise ConfigError("proxy.kind haproxy needs setpriv (util-linux) on PATH; install it or set proxy.kind: serve")
    wrapper = directory / "haproxy"
    proxy = config.proxy
    wrapper.write_text(_WRAPPER.format(host=proxy.admin_host, stats=proxy.stats_port, metrics=proxy.metrics_port,
                                       binary=get_haproxy_binary()))
    wrapper.chmod(0o755)
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
    }


def haproxy_pids(directory: Path) -> list[int]:
    """Process ids of the HAProxy processes whose config lies under ``directory``."""
    marker = str(directory).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.startswith(marker) for arg in argv[1:]) and b"haproxy" in argv[0]:
                pids.append(int(entry.name))
    return pids


def stop() -> None:
    """Shut the local Ray cluster down, and Serve with it, then make sure its HAProxy is gone.
    (``serve.shutdown`` first would print a raylet error about its own interrupted graceful
    shutdown onto stdout, and when Ray is already down it would start Ray again.)"""
    global _haproxy_dir
    if ray.is_initialized():
        ray.shutdown()
    if _haproxy_dir is not None:
        # each HAProxy gets SIGKILL when its Ray worker dies; this covers a worker still exiting
        deadline = time.monotonic() + 10
        while (pids := haproxy_pids(_haproxy_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(_haproxy_dir, ignore_errors=True)
        _haproxy_dir = None
