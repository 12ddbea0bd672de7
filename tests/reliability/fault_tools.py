"""Helpers for the reliability tests: a real cascade on a local Ray cluster per module, the
process ids of its replicas (for SIGSTOP and SIGKILL from outside, with no hook in the
product), and a load generator that records every answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from serving.cli.bench import serve_processes
from serving.config import CascadeConfig
from ports import free_port

IN_DOMAIN = ["play some jazz", "set an alarm for 7 am", "what is the weather tomorrow", "transfer 50 dollars to savings"]
ODD = ["zebra quantum pancake", "the of and a", "purple", "music alarm weather balance", "yes"]


def reliability_config(home: Path, log_path: Path, **sections: Any) -> CascadeConfig:
    """A cascade on the tiny models as `cascade serve` ships it (the fast path), with HAProxy
    listeners of its own: a fixed threshold makes the ODD texts unsure. The traffic and feedback
    logs go beside the escalation log, out of ``home`` (which may be the session's shared one)."""
    raw: dict[str, Any] = {"home": str(home), "port": free_port(), "log": {"path": str(log_path)},
                           "feedback": {"traffic_path": f"{log_path}-traffic", "path": f"{log_path}-feedback"},
                           "routing": {"threshold": 0.9, "audit_rate": 0.0}, "limits": {"max_items": 64},
                           "proxy": {"stats_port": free_port(), "metrics_port": free_port()}, "metrics": {"port": free_port()}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return CascadeConfig.model_validate(raw)


@contextmanager
def running_cascade(config: CascadeConfig) -> Iterator[str]:
    """Start Ray and the application, yield its URL, shut everything down."""
    from serving.cli import runner

    try:
        yield runner.start(config, num_cpus=2)
    finally:
        runner.stop()


def replica_pids(deployment: str) -> list[int]:
    """Process ids of a deployment's live replicas; a short timeout paces the restart polling."""
    return serve_processes(timeout_s=10).get(deployment, [])


def restart_ingress_replicas() -> None:
    """SIGKILL every ingress replica and wait until Serve has started as many new ones."""
    old = replica_pids("Ingress")
    assert old, "no ingress replica is running"
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = replica_pids("Ingress")
        if len(new) == len(old) and not set(new) & set(old):
            return
        time.sleep(1)
    raise AssertionError("the ingress replicas did not come back within 120 s")


def wait_ready(url: str, path: str = "/healthz") -> None:
    """Wait until ``path`` answers 200 (at most 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}{path} did not answer 200 within 60 s")


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    body: dict | None


@dataclass
class Load:
    """``clients`` threads posting ``body`` to /v1/classify in a loop until stopped; every answer kept."""

    url: str
    body: dict
    clients: int = 6
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}/v1/classify", json=self.body)
                    status, body = response.status_code, response.json()
                    if status != 200:
                        body["retry-after"] = response.headers.get("retry-after")
                except httpx.HTTPError:
                    status, body = 0, None  # no answer at all counts as a failure
                self.answers.append(Answer(sent, time.monotonic(), status, body))

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._client) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
