"""Shared fixtures: a small synthetic intent data set (nothing here assumes Banking77) and a
registry bootstrapped from it once per test session."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

INTENTS = {
    "weather": ["what is the weather {when}", "will it rain {when}", "is it going to be sunny {when}", "how cold will it be {when}", "forecast for {when} please"],
    "alarm": ["set an alarm for {time}", "wake me up at {time}", "alarm at {time} please", "can you set my alarm to {time}", "i need an alarm {time}"],
    "music": ["play some {genre}", "put on {genre} music", "i want to hear {genre}", "start my {genre} playlist", "play {genre} songs"],
    "balance": ["what is my account balance", "how much money do i have {when}", "show my balance {when}", "check my savings {when}", "how much is left in my account"],
    "transfer": ["send {amount} to my brother", "transfer {amount} to savings", "move {amount} to my other account", "pay {amount} to alice", "wire {amount} abroad"],
}
FILLERS = {
    "when": ["today", "tomorrow", "this weekend", "tonight", "on friday", "next week", "now"],
    "time": ["7 am", "six thirty", "noon", "5:45", "midnight", "8 tomorrow"],
    "genre": ["jazz", "rock", "classical", "hip hop", "country", "lofi"],
    "amount": ["50 dollars", "100 euros", "twenty pounds", "$300", "a thousand"],
}


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


def make_rows(n_per_label: int, seed: int) -> list[dict]:
    """Templated intent texts with their labels."""
    rng = random.Random(seed)
    rows = []
    for label, templates in INTENTS.items():
        for _ in range(n_per_label):
            text = rng.choice(templates).format(**{k: rng.choice(v) for k, v in FILLERS.items()})
            rows.append({"utterance": text, "intent": label})
    rng.shuffle(rows)
    return rows


def write_dataset(directory: Path, train_per_label: int = 60, test_per_label: int = 20) -> Path:
    """A directory with train.csv, test.jsonl and labels.json in non-default column names."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "train.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["utterance", "intent"])
        writer.writeheader()
        writer.writerows(make_rows(train_per_label, seed=1))
    with (directory / "test.jsonl").open("w") as f:
        for row in make_rows(test_per_label, seed=2):
            f.write(json.dumps(row) + "\n")
    (directory / "labels.json").write_text(json.dumps(sorted(INTENTS)))
    return directory


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
