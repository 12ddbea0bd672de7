"""What keeping every request in the traffic log costs an event loop, in one process, without
Ray or HTTP: ``--concurrency`` tasks each spend ``--work-us`` of CPU per request (a stand-in for
the ingress's own work) and then, with the log on, append a one-item request to a
``TrafficLog`` and wait for its commit, as ``Cascade.classify`` does. Rounds alternate the log on and off; it prints requests/s and CPU ms per request of each
run, then the median cost. The end-to-end figure over HTTP is ``traffic_log_cost.sh``; this one
is steady enough to compare two builds of the log (run it from each).

    python tests/benchmarks/traffic_log_micro.py [--rounds 3] [--seconds 5] [--prefill 200000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from serving.traffic import KeptItem, KeptRequest, TrafficLog  # noqa: E402
from serving.traffic_store import TrafficFile  # noqa: E402

TEXT = "I still have not received my new card, I ordered over a week ago."


def spend(microseconds: float) -> None:
    """Busy the CPU for ``microseconds``, as a request's own work would."""
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


def kept(request_id: str) -> KeptRequest:
    return KeptRequest(request_id, time.time(), True, "student-1", "teacher-1",
                       [KeptItem(TEXT, "student", "card_arrival", "card_arrival", None, 0.93)])


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds a process has used (0 for none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(log: TrafficLog, keep: bool, seconds: float, concurrency: int, work_us: float) -> tuple[float, float, float]:
    """One run: requests/s, and CPU ms per request of this process and of the log's writer process."""
    answered = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal answered
        while time.perf_counter() < stop:
            spend(work_us)
            await asyncio.sleep(0)  # the request's own awaits
            if keep:
                await log.append([kept(log.new_request_id())])
            answered += 1

    before, writer_before, started = resource.getrusage(resource.RUSAGE_SELF), process_cpu_s(log.writer_pid), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    after, writer_after, elapsed = resource.getrusage(resource.RUSAGE_SELF), process_cpu_s(log.writer_pid), time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return answered / elapsed, cpu * 1000 / answered, (writer_after - writer_before) * 1000 / answered


def prefill(log: TrafficLog, rows: int) -> None:
    """Fill the log's traffic file first, as hours of traffic would (inserts into a large table cost more)."""
    store = TrafficFile(log.path, log.retention_s)
    for start in range(0, rows, 1000):
        store.commit([json.dumps([kept(log.new_request_id()) for _ in range(min(1000, rows - start))])])
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--work-us", type=float, default=500.0, help="CPU per request besides the log (default: 500)")
    parser.add_argument("--prefill", type=int, default=200_000, help="rows in the traffic file before the runs (default: 200,000)")
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as scratch:
        log = TrafficLog(Path(scratch), retention_s=7 * 24 * 3600)
        prefill(log, args.prefill)
        for round_ in range(1, args.rounds + 1):
            for keep in (True, False):  # a new event loop each run, as a test client's requests have
                rps, cpu_ms, writer_ms = uvloop.run(measure(log, keep, args.seconds, args.concurrency, args.work_us))
                runs[keep].append((rps, cpu_ms, writer_ms))
                print(f"round {round_} traffic log {'on ' if keep else 'off'}: {rps:8.0f} requests/s, {cpu_ms:.3f} CPU ms per request"
                      f" (writer process: {writer_ms:.3f})", flush=True)
        log.close()
    on, off = (statistics.median(r[0] for r in runs[k]) for k in (True, False))
    cpu_on, cpu_off = (statistics.median(r[1] for r in runs[k]) for k in (True, False))
    writer = statistics.median(r[2] for r in runs[True])
    print(f"median: on {on:.0f}, off {off:.0f} requests/s: the log costs {1 - on / off:.1%} of requests/s, "
          f"{(cpu_on - cpu_off) * 1000:.1f} us of this process's CPU per request and {writer * 1000:.1f} us of its writer process's")


if __name__ == "__main__":
    main()
