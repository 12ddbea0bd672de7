"""The traffic log's writer process: appends return once their rows are committed and can be
found, a line that cannot be committed fails its turn's appends and no others, the child's death
fails what it had not acknowledged and the next append starts a new one on the same file, a full
pipe holds writes until the child reads them, appends come from successive and concurrent event
loops, and the child never outlives its replica."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.traffic import KeptItem, KeptRequest, TrafficLog, TrafficReader

RETENTION_S = 3600.0


def kept(log: TrafficLog, text: str = "my card", items: list | None = None) -> KeptRequest:
    items = [KeptItem(text, "student", "a", "a", None, 0.9)] if items is None else items
    return KeptRequest(log.new_request_id(), time.time(), False, "s1", "t1", items)


@pytest.fixture
def log(tmp_path):
    errors: list[int] = []
    log = TrafficLog(tmp_path, RETENTION_S, on_error=lambda: errors.append(1))
    log.errors = errors
    yield log
    log.close()


def found(log: TrafficLog, requests: list[KeptRequest]) -> dict[str, KeptRequest]:
    reader = TrafficReader(log.directory, RETENTION_S)
    try:
        return reader.find([r.request_id for r in requests])
    finally:
        reader.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_appends_of_one_turn_share_a_line_and_are_found_once_acknowledged(log):
    requests = [kept(log, f"text {i}") for i in range(20)]

    async def main():
        appends = asyncio.gather(*(log.append([r]) for r in requests))
        await asyncio.sleep(0)  # the appends' turn
        await asyncio.sleep(0)  # its end: the hand-over
        assert len(log._unacknowledged) == 1, "one line for the turn's 20 appends"
        return await appends

    assert asyncio.run(main()) == [1] * 20
    rows = found(log, requests)
    assert [rows[r.request_id].items[0].text for r in requests] == [f"text {i}" for i in range(20)]
    assert rows[requests[0].request_id] == requests[0]  # every field as kept


def test_a_line_that_cannot_be_committed_fails_its_append_and_no_other(log):
    bad = KeptRequest(log.new_request_id(), time.time(), False, "s1", "t1", None)  # items NOT NULL: its commit fails
    good = [kept(log) for _ in range(5)]
    os.kill(log.writer_pid, signal.SIGSTOP)  # every line waits: the child reads them all into one transaction

    async def main():
        appends = []
        for request in [good[0], good[1], bad, *good[2:]]:  # each in a turn of the loop of its own: a line each
            appends.append(asyncio.ensure_future(log.append([request])))
            await asyncio.sleep(0.01)
        os.kill(log.writer_pid, signal.SIGCONT)
        return await asyncio.gather(*appends, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert outcomes[:2] == [1, 1] and outcomes[3:] == [1, 1, 1], outcomes
    assert isinstance(outcomes[2], OSError) and "NOT NULL" in str(outcomes[2])
    assert log.errors == [1] and set(found(log, [bad, *good])) == {r.request_id for r in good}
    later = kept(log)
    assert asyncio.run(log.append([later])) == 1 and later.request_id in found(log, [later])


def test_the_writers_death_fails_what_it_had_not_acknowledged_and_a_new_one_takes_over(log):
    before = kept(log)
    asyncio.run(log.append([before]))
    first = log.writer_pid
    os.kill(first, signal.SIGSTOP)  # it reads nothing more until it dies
    lost = kept(log)

    async def main():
        pending = asyncio.ensure_future(log.append([lost]))
        await asyncio.sleep(0.2)
        assert not pending.done(), "nothing is acknowledged before its commit"
        os.kill(first, signal.SIGKILL)
        with pytest.raises(OSError, match="exited"):
            await pending

    asyncio.run(main())
    assert log.errors == [1]
    after = kept(log)
    assert asyncio.run(log.append([after])) == 1
    assert log.writer_pid not in (None, first)
    assert set(found(log, [before, lost, after])) == {before.request_id, after.request_id}  # same file, nothing half-written


def test_a_full_pipe_holds_writes_until_the_writer_reads_them(log):
    os.kill(log.writer_pid, signal.SIGSTOP)
    requests = [kept(log, "x" * 20_000) for _ in range(200)]  # 4 MB: more than the pipe holds

    async def main():
        appends = [asyncio.ensure_future(log.append([r])) for r in requests]
        await asyncio.sleep(0.3)
        assert log._outbox, "the pipe is full: the rest waits in the outbox"
        assert not any(a.done() for a in appends)
        os.kill(log.writer_pid, signal.SIGCONT)
        return await asyncio.wait_for(asyncio.gather(*appends), 30)

    writer = log.writer_pid
    try:
        assert asyncio.run(main()) == [1] * 200
    finally:
        os.kill(writer, signal.SIGCONT)
    assert len(found(log, requests)) == 200


def test_appends_from_successive_and_concurrent_event_loops(log):
    first, second = kept(log), kept(log)
    assert asyncio.run(log.append([first])) == 1
    assert asyncio.run(log.append([second])) == 1  # the first loop is closed: the second one watches the pipes
    threaded = [kept(log) for _ in range(40)]
    results: list = []
    started = threading.Barrier(4)

    def in_a_thread(part: list[KeptRequest]) -> None:
        async def main():
            started.wait()
            return await asyncio.gather(*(log.append([r]) for r in part))
        results.extend(asyncio.run(main()))

    threads = [threading.Thread(target=in_a_thread, args=(threaded[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [1] * 40
    assert len(found(log, [first, second, *threaded])) == 42


def test_close_commits_what_was_sent_and_the_writer_exits_and_later_appends_are_refused(tmp_path):
    log = TrafficLog(tmp_path, RETENTION_S)
    pid = log.writer_pid
    request = kept(log)

    async def main():
        pending = asyncio.ensure_future(log.append([request]))
        await asyncio.sleep(0)  # handed over, not yet acknowledged
        await asyncio.sleep(0)
        log.close()
        return await pending

    assert asyncio.run(main()) == 1
    assert not alive(pid) and request.request_id in found(log, [request])
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(log.append([kept(log)]))


def test_the_writer_exits_with_the_replica_that_started_it(tmp_path):
    replica = subprocess.run(
        [sys.executable, "-c", "import os, sys; from pathlib import Path; from serving.traffic import TrafficLog; "
         "log = TrafficLog(Path(sys.argv[1]), 60.0); print(log.writer_pid, flush=True); os._exit(0)", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True)
    pid = int(replica.stdout)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "an orphaned traffic writer"


def test_purge_deletes_the_rows_past_retention_and_keeps_the_rest(log):
    old, new = kept(log), None
    asyncio.run(log.append([old]))
    time.sleep(0.01)
    cut = time.time()  # between the two requests' ids
    new = kept(log)
    asyncio.run(log.append([new]))
    log.purge(now=cut + RETENTION_S)
    assert set(found(log, [old, new])) == {new.request_id}


def test_an_append_of_the_turn_that_closes_the_log_is_refused_and_starts_no_writer(tmp_path):
    log = TrafficLog(tmp_path, RETENTION_S)
    pid = log.writer_pid

    async def main():
        pending = asyncio.ensure_future(log.append([kept(log)]))
        await asyncio.sleep(0)  # gathered: its turn has not ended
        log.close()
        with pytest.raises(RuntimeError, match="closed"):
            await pending

    asyncio.run(main())
    assert log.writer_pid is None and not alive(pid)
