"""The ingress's escalation log writer: concurrent appends share writes and fsyncs, each append
returns once its own records are on disk, and a failed write acknowledges none of the appends
it held while later ones succeed."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from distill.escalations import EscalationRecord, read_records
from serving.log_writer import GroupCommitLog
from serving.segments import SegmentWriter


def record(text: str) -> EscalationRecord:
    return EscalationRecord(request_id=text, text=text, reason="unsure", student_label="a", teacher_label="b",
                            student_probs=[0.6, 0.4], teacher_probs=[0.1, 0.9], student_version="s", teacher_version="t")


class CountingWriter(SegmentWriter):
    """A SegmentWriter that counts its writes and can be told to fail the next one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes = 0
        self.fail_next: Exception | None = None
        self.slow = threading.Event()  # while clear, a write waits: appends pile up behind it
        self.entered = threading.Event()  # a write has begun

    def append(self, records):
        self.entered.set()
        self.slow.wait(5)
        self.writes += 1
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return super().append(records)


def test_concurrent_appends_share_fsyncs_and_each_returns_its_own_count(tmp_path):
    writer = CountingWriter(tmp_path)
    written = []
    log = GroupCommitLog(writer, on_written=lambda n, size: written.append((n, size)))

    async def main():
        first = asyncio.ensure_future(log.append([record("first")]))
        await asyncio.to_thread(writer.entered.wait, 5)  # the first write has begun and waits on `slow`
        rest = [asyncio.ensure_future(log.append([record(f"r{i}-{j}") for j in range(i)])) for i in range(1, 21)]
        await asyncio.sleep(0.05)
        assert not first.done(), "nothing is acknowledged before its write and fsync return"
        writer.slow.set()
        return await first, await asyncio.gather(*rest)

    first, counts = asyncio.run(main())
    assert first == 1 and counts == list(range(1, 21))
    assert writer.writes == 2, "the 20 queued appends were written (and fsynced) together"
    assert sum(n for n, _ in written) == 211 and sum(size for _, size in written) == sum(
        os.path.getsize(p) for p in tmp_path.glob("segment-*.jsonl"))
    assert sorted(r.request_id for r in read_records(tmp_path)) == sorted(["first"] + [f"r{i}-{j}" for i in range(1, 21) for j in range(i)])


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("a record that cannot be serialised")])
def test_a_failed_write_fails_every_append_it_held_and_later_ones_succeed(tmp_path, error):
    writer = CountingWriter(tmp_path)
    writer.slow.set()
    errors = []
    log = GroupCommitLog(writer, on_error=lambda: errors.append(1))

    async def main():
        writer.fail_next = error
        with pytest.raises(type(error)):
            await log.append([record("lost-1"), record("lost-2")])
        return await log.append([record("kept")])  # the writer thread outlived the failure

    assert asyncio.run(main()) == 1
    assert errors == [1]
    assert [r.request_id for r in read_records(tmp_path)] == ["kept"], "nothing of the failed write was acknowledged or kept"


def test_an_empty_append_writes_nothing(tmp_path):
    writer = CountingWriter(tmp_path)
    writer.slow.set()
    assert asyncio.run(GroupCommitLog(writer).append([])) == 0
    assert writer.writes == 0


def test_close_writes_what_is_pending_stops_the_thread_and_refuses_later_appends(tmp_path):
    writer = CountingWriter(tmp_path)  # its first write waits on `slow`
    log = GroupCommitLog(writer)

    async def main():
        first = asyncio.ensure_future(log.append([record("first")]))
        await asyncio.to_thread(writer.entered.wait, 5)
        queued = asyncio.ensure_future(log.append([record("queued")]))
        await asyncio.sleep(0.05)  # handed over behind the first write
        closing = asyncio.ensure_future(asyncio.to_thread(log.close))
        await asyncio.sleep(0.05)
        writer.slow.set()
        await closing
        assert (await first, await queued) == (1, 1)
        with pytest.raises(RuntimeError, match="closed"):
            await log.append([record("late")])

    asyncio.run(main())
    assert not any(thread.name == f"log-{tmp_path.name}" for thread in threading.enumerate())
    assert sorted(r.request_id for r in read_records(tmp_path)) == ["first", "queued"]
    assert writer._file is None, "the segment is closed"


def test_a_cancelled_append_cancels_nobody_elses_write(tmp_path):
    writer = CountingWriter(tmp_path)  # its first write waits on `slow`
    log = GroupCommitLog(writer)

    async def main():
        first = asyncio.ensure_future(log.append([record("first")]))
        await asyncio.to_thread(writer.entered.wait, 5)
        gone, staying = (asyncio.ensure_future(log.append([record(name)])) for name in ("gone", "staying"))
        await asyncio.sleep(0.05)  # both appended in one loop turn: one share of the next write
        gone.cancel()
        await asyncio.sleep(0.05)
        assert not gone.done(), "a cancelled append waits for the write it is part of"
        writer.slow.set()
        assert (await first, await staying) == (1, 1)
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())
    log.close()
    assert sorted(r.request_id for r in read_records(tmp_path)) == ["first", "gone", "staying"]

