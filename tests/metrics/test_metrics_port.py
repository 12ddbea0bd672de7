"""A taken metrics port stops `cascade serve` at once with the field to change, instead of
Ray's node start-up timing out half a minute later."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.cli import runner
from serving.config import CascadeConfig, ConfigError


def test_a_taken_metrics_port_is_named_before_ray_starts(tmp_path: Path):
    import ray

    assert not ray.is_initialized()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CascadeConfig.model_validate({"home": str(tmp_path), "metrics": {"port": port}})
        with pytest.raises(ConfigError, match=rf"metrics.port: port {port} is in use"):
            runner.start(config)
    assert not ray.is_initialized()
