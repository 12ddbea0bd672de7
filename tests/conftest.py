"""Shared fixtures: a small synthetic intent data set (nothing here assumes Banking77) and a
registry bootstrapped from it once per test session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from intent_data import write_dataset


def pytest_sessionfinish(session, exitstatus) -> None:
    session.config.cascade_exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Once the results are reported, end a session that used Ray without interpreter
    finalization: the suite starts and shuts down Ray many times in this process, and a core
    worker thread left from an earlier session can run into freed memory while the interpreter
    tears down (ray-project/ray#31145). That crash came after every test had passed (seen as a
    segfault of the pytest process, its exit status 139, in about one full run in four), so it
    would fail a green run; the exit status here is the session's own."""
    status = getattr(config, "cascade_exit_status", None)
    if status is None or "ray" not in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small five-intent data set on disk."""
    return write_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory, tiny_data) -> Path:
    """A home directory whose registry holds a teacher and a student bootstrapped on ``tiny_data``."""
    from distill.bootstrap import ensure_models

    home = tmp_path_factory.mktemp("tiny-home")
    ensure_models(home, str(tiny_data), progress=False)
    return home


@pytest.fixture(scope="session")
def own_haproxy_ports():
    """While active, every cascade started through ``serving.cli.runner.start`` whose config
    leaves ``proxy`` at its defaults takes free HAProxy stats and metrics ports instead of 8404
    and 9101, so that it never meets another test run's HAProxy on this machine (each start has
    its own HAProxy files already). A config that sets ``proxy`` is started as it is."""
    from ports import free_port
    from serving.cli import runner

    start = runner.start

    def start_on_free_ports(config, *args, **kwargs):
        if "proxy" not in config.model_fields_set:
            config = config.model_copy(update={"proxy": config.proxy.model_copy(
                update={"stats_port": free_port(), "metrics_port": free_port()})})
        return start(config, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "start", start_on_free_ports)
        yield


@pytest.fixture
def own_home(tiny_home: Path, tmp_path: Path) -> Path:
    """A copy of ``tiny_home`` for one test that registers, promotes or rolls back models: the
    session's home, which other tests read, keeps its current models whatever the test does."""
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    return home
