"""Start and stop the cascade on a local Ray cluster (used by ``cascade serve`` and the tests)."""

from __future__ import annotations

import os
import socket
import time

import httpx
import ray
from ray import serve

from serving.app import build_app
from serving.config import CascadeConfig, ConfigError


def start(config: CascadeConfig, num_cpus: float | None = None, ready_timeout_s: float = 120.0) -> str:
    """Start Ray (if needed) and the application; return the base URL once ``/readyz`` answers."""
    if not ray.is_initialized():
        _check_free(config.metrics.port, "metrics.port")
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            configure_logging=True,
            logging_level="WARNING",
            log_to_driver=False,
            _metrics_export_port=config.metrics.port,
            _system_config={"metrics_report_interval_ms": int(config.metrics.report_interval_s * 1000)},
        )
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


def _check_free(port: int, field: str) -> None:
    """Fail early with the config field to change: Ray's node start-up only times out after
    half a minute when its metrics export port is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as err:
            raise ConfigError(f"{field}: port {port} is in use ({err.strerror}); choose another in the config file") from None


def stop() -> None:
    """Shut the local Ray cluster down, and Serve with it. (``serve.shutdown`` first would
    print a raylet error about its own interrupted graceful shutdown onto stdout, and when Ray
    is already down it would start Ray again.)"""
    if ray.is_initialized():
        ray.shutdown()
