"""The escalation log survives ``kill -9`` of its writer mid-write: a real writer process is
killed while it appends, a new one retries the unacknowledged batch and appends more, and
the log read back holds every acknowledged record, no torn record and no duplicate."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from distill.escalations import read_records, segments

WRITER = Path(__file__).with_name("log_crash_writer.py")
BATCH = 8


def start_writer(directory: Path, prefix: str, batches: int, retry: list[str] = ()) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, str(WRITER), str(directory), prefix, str(batches), str(BATCH), *retry]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def kill_mid_stream(process: subprocess.Popen, after_acks: int, rng: random.Random) -> list[str]:
    """Read acknowledgements until ``after_acks``, wait a random moment, SIGKILL; return every id acknowledged."""
    acked = []
    while len(acked) < after_acks:
        line = process.stdout.readline()
        assert line, "the writer stopped before it was killed"
        acked.append(line.strip())
    time.sleep(rng.uniform(0, 0.05))  # land somewhere inside a later write or fsync
    process.send_signal(signal.SIGKILL)
    acked += [line.strip() for line in process.stdout]  # acknowledgements printed before death
    process.wait()
    assert process.returncode == -signal.SIGKILL
    return acked


def raw_lines(directory: Path) -> tuple[list[str], int]:
    """Ids of every complete line on disk, and the number of torn (unterminated) lines."""
    ids, torn = [], 0
    for segment in segments(directory):
        for raw in segment.read_bytes().splitlines(keepends=True):
            if raw.endswith(b"\n"):
                ids.append(json.loads(raw)["id"])
            else:
                torn += 1
    return ids, torn


def test_kill_minus_nine_mid_write_loses_no_acknowledged_record(tmp_path):
    rng = random.Random(7)
    acknowledged, torn_seen, retried = set(), 0, 0
    for round_ in range(6):
        prefix = f"r{round_}"
        acked = kill_mid_stream(start_writer(tmp_path, prefix, batches=400), after_acks=BATCH * rng.randint(2, 6), rng=rng)
        acknowledged |= set(acked)
        _, torn = raw_lines(tmp_path)
        torn_seen = max(torn_seen, torn)
        # the batch that was in flight when the writer died: its client never got an ack, so it retries
        next_index = len(acked)
        in_flight = [f"{prefix}-{next_index + i}" for i in range(BATCH)]
        restarted = start_writer(tmp_path, f"{prefix}-after", batches=2, retry=in_flight)
        acked_after = [line.strip() for line in restarted.stdout]
        assert restarted.wait() == 0
        acknowledged |= set(acked_after)
        retried += len(in_flight)
    records = read_records(tmp_path)
    ids = [r.id for r in records]
    on_disk, torn = raw_lines(tmp_path)
    print(f"\nkill -9 test: {len(acknowledged)} acknowledged, {len(ids)} read back, {torn} torn line(s) on disk "
          f"skipped, {len(on_disk) - len(set(on_disk))} raw duplicate line(s) from retries collapsed by id")
    assert len(ids) == len(set(ids)), "a record was read back twice"
    assert set(ids) == acknowledged, "read back must be exactly the acknowledged records"
    assert all(r.text.startswith(r.id) and len(r.text) == 256 * 1024 for r in records), "a record was read back torn"
