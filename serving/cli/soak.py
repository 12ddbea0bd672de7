"""``cascade soak``: hold a running cascade under steady load (by default 16 concurrent clients for
60 s) and report what a reliability check needs: every non-2xx answer and transport error, the
latency percentiles, and how many items came back degraded and why.

Unlike ``cascade bench`` (capacity, with wrk), every answer is read, so degraded items and
their causes are counted; the client is one async Python process on the same machine, which
takes CPU from the cascade on a small host."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Sequence

import httpx
import numpy as np
from pydantic import BaseModel

from serving.config import ConfigError


class SoakReport(BaseModel):
    clients: int
    seconds: float
    requests: int
    errors: int  # non-2xx answers plus requests that got no answer
    statuses: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    items: int
    escalated: int
    degraded: dict[str, int]  # degraded items by cause


async def _soak(url: str, texts: Sequence[str], clients: int, seconds: float, batch: int) -> SoakReport:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    items = escalated = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:

        async def one_client(offset: int) -> None:
            nonlocal items, escalated
            i = offset * batch
            while time.perf_counter() < deadline:
                inputs = [texts[(i + k) % len(texts)] for k in range(batch)]
                i += clients * batch
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/classify", json={"inputs": inputs, "options": {"evaluation": True}})  # load, not traffic to learn from
                except httpx.HTTPError as err:
                    statuses[type(err).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    predictions = response.json()["predictions"]
                    items += len(predictions)
                    escalated += sum(p["escalated"] for p in predictions)
                    degraded.update(p["cause"] for p in predictions if p["degraded"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies or [float("nan")]) * 1000
    return SoakReport(
        clients=clients, seconds=round(elapsed, 1), requests=sum(statuses.values()),
        errors=sum(n for status, n in statuses.items() if not status.startswith("2")),
        statuses=dict(statuses), requests_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 1), p99_ms=round(float(np.percentile(ms, 99)), 1),
        max_ms=round(float(ms.max()), 1), items=items, escalated=escalated, degraded=dict(degraded),
    )


def soak(url: str, texts: Sequence[str], clients: int, seconds: float, batch: int) -> SoakReport:
    """Drive ``clients`` concurrent clients, each sending ``batch`` texts per request back to
    back, against the cascade at ``url`` for ``seconds``."""
    if not texts:
        raise ConfigError("soak needs at least one text to send")
    return asyncio.run(_soak(url, texts, clients, seconds, batch))
