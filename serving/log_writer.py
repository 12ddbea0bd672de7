"""Durable appends from event loops: ``TurnBatchedLog`` hands a loop turn's appends over at
once, and ``GroupCommitLog`` writes them through a ``SegmentWriter`` (``serving.segments``):
one thread writes and fsyncs what concurrent requests appended meanwhile, so the answer path
neither waits on a disk call in the event loop nor makes a second Ray call per escalation.
Every ingress replica has its own. ``settle`` resolves the appends' futures from any thread."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable, Sequence

from serving.segments import SegmentWriter

logger = logging.getLogger("cascade")


class _Commit(asyncio.Future):
    """One event-loop turn's share of a group commit, awaited by every append of that turn. It
    cannot be cancelled: a request that goes away (its task cancelled) still gets its
    CancelledError, once the write it is part of has settled, and the others' wait goes on. An
    ``asyncio.shield`` per append did the same at the cost of a second future per request."""

    def cancel(self, msg=None) -> bool:
        return False


class TurnBatchedLog:
    """Durable appends from event loops, handed over once per loop turn: ``await append(records)``
    returns once the records are committed, with whatever else that turn of the loop appended. A
    hand-over per request cost more CPU than the write itself. Subclasses say where a turn's
    records go (``_hand_over``) and settle its future once they are committed, or failed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._gathering: dict[asyncio.AbstractEventLoop, tuple[list, asyncio.Future]] = {}  # appends of this loop turn
        self._closed = False

    async def append(self, records: Sequence[Any]) -> int:
        """Write ``records`` durably; returns how many were written. Raises what failed their
        write (OSError for a full disk), or RuntimeError once the log is closed."""
        if not records:
            return 0
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = ([], _Commit(loop=loop))
            loop.call_soon(self._turn_ended, loop)
        gathering[0].extend(records)
        await gathering[1]
        return len(records)

    def _turn_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        records, done = self._gathering.pop(loop)
        self._hand_over(records, done, loop)

    def _hand_over(self, records: list, done: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError


class GroupCommitLog(TurnBatchedLog):
    """Durable appends through a ``SegmentWriter`` in a thread: one write and fsync for whatever
    requests appended meanwhile (a write takes further appends while it holds fewer than
    ``max_batch`` records). A failed write raises its error (OSError for a full disk) in every
    append it held, and acknowledges none of them.

    ``on_written(records, bytes)`` and ``on_error()`` are called from the writer thread."""

    def __init__(self, writer: SegmentWriter, max_batch: int = 512,
                 on_written: Callable[[int, int], None] | None = None, on_error: Callable[[], None] | None = None):
        super().__init__(f"log {writer.directory}")
        self.writer = writer
        self.max_batch = max_batch
        self.on_written = on_written
        self.on_error = on_error
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"log-{writer.directory.name}", daemon=True)
        self._thread.start()

    def _hand_over(self, records: list, done: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        self._pending.put((records, done, loop))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending, stop the writer thread and close the writer, once nothing
        appends any more; a later append raises RuntimeError."""
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.writer.close()

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            size = len(first[0])
            while size < self.max_batch:
                try:
                    call = self._pending.get_nowait()
                except queue.Empty:
                    break
                if call is None:  # closing: write what came before, then stop
                    self._write(batch)
                    return
                batch.append(call)
                size += len(call[0])
            self._write(batch)

    def _write(self, batch: list) -> None:
        """Write one batch and settle its appends. Any failure (a full disk, a record that cannot
        be serialised) fails the whole batch and leaves the thread running for the next."""
        records = [record for call in batch for record in call[0]]
        bytes_before = self.writer.bytes_written
        outcome: Exception | None = None
        try:
            self.writer.append(records)
        except Exception as err:
            outcome = err
            logger.error("log %s: writing %d record(s) failed: %r", self.writer.directory, len(records), err)
        try:
            if outcome is None and self.on_written:
                self.on_written(len(records), self.writer.bytes_written - bytes_before)
            elif outcome is not None and self.on_error:
                self.on_error()
        except Exception as err:  # a metrics hiccup must not stop the log
            logger.warning("log: counting a write failed: %r", err)
        settle([(done, loop, outcome or len(call_records)) for call_records, done, loop in batch])


def settle(outcomes: Sequence[tuple[asyncio.Future, asyncio.AbstractEventLoop, int | Exception]]) -> None:
    """Settle appends' futures, from any thread: each gets its count, or raises its error. Futures
    of the running loop are settled at once; each other loop is woken once for its whole share."""
    running = running_loop()
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for done, loop, outcome in outcomes:
        by_loop.setdefault(loop, []).append((done, outcome))
    for loop, calls in by_loop.items():
        if loop is running:
            _settle(calls)
            continue
        try:
            loop.call_soon_threadsafe(_settle, calls)
        except RuntimeError:  # that event loop is closed: nobody waits for these answers
            pass


def running_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's running event loop, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(calls: list[tuple[asyncio.Future, int | Exception]]) -> None:
    for done, outcome in calls:
        if done.done():  # a request that went away (its append cancelled)
            continue
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
            done.exception()  # every awaiting request raises it; none left means nobody to tell
        else:
            done.set_result(outcome)
