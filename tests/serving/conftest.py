"""One real Ray Serve cascade per test session, on the tiny data set's models."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import CascadeConfig
from ports import free_port


@pytest.fixture(scope="session")
def cascade_config(tiny_home: Path, tmp_path_factory) -> CascadeConfig:
    # a fixed threshold keeps "unsure" deterministic on a task the student masters
    return CascadeConfig.model_validate(
        {
            "home": str(tiny_home),
            "port": free_port(),
            "routing": {"threshold": 0.9, "audit_rate": 0.0},  # no audits: answers stay deterministic
            "log": {"path": str(tmp_path_factory.mktemp("escalations"))},
            # the traffic and feedback logs too, away from the session's shared home
            "feedback": {"traffic_path": str(tmp_path_factory.mktemp("traffic")), "path": str(tmp_path_factory.mktemp("feedback"))},
            "limits": {"max_items": 64},
            "student": {"poll_registry_s": 0.5},
            # the fast path, as `cascade serve` ships it, with HAProxy listeners of its own
            "proxy": {"stats_port": free_port(), "metrics_port": free_port()},
            "metrics": {"port": free_port()},  # Ray's metrics port, which another test run may hold at 8080
        }
    )


@pytest.fixture(scope="session")
def cascade_url(cascade_config: CascadeConfig):
    from serving.cli import runner

    url = runner.start(cascade_config, num_cpus=2)
    yield url
    runner.stop()
