"""The traffic log: every answered request, kept for a retention window so that outcome
feedback (``POST /v1/feedback``) can name any item the cascade answered, including those the
student answered alone, which the escalation log never sees.

Each ingress replica writes its own SQLite file (``traffic-<writer>.sqlite``, WAL, synchronous
FULL): one row per request, committed by the replica's writer process before the answer goes
out, the escalation log's guarantee (``TrafficLog``). A request id starts with its writer's id, so
any replica finds a request in one indexed lookup, in the file that holds it, after a restart
too. SQLite rather than JSON Lines because feedback needs lookups by id over millions of rows,
and retention needs deletes; one file per writer because nothing then waits on another
replica's lock. Rows past the retention window are deleted, and so are the files of replicas
that have been gone that long."""

from __future__ import annotations

import asyncio
import collections
import fcntl
import itertools
import json
import logging
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from serving.log_writer import TurnBatchedLog, running_loop, settle
from serving.traffic_store import F_SETPIPE_SZ, PIPE_BYTES, connect, purge

logger = logging.getLogger("cascade")

WRITER_ID_CHARS = 8  # a request id's first characters: the id of the replica that kept it
START_TIMEOUT_S = 30.0  # a writer process opens its file within this


class KeptItem(NamedTuple):
    """One answered item as kept: its text (redacted as logged) and every label it was given (a
    named tuple: one is built per answered item, and JSON writes it as a plain array)."""

    text: str
    tier: str  # "student" or "teacher": which model answered
    answered: str  # the label answered
    student_label: str | None  # None: the student did not score it
    teacher_label: str | None  # None: the teacher was not consulted
    confidence: float | None = None  # the student's calibrated confidence (None: the policy did not score it)


class KeptRequest(NamedTuple):
    """One answered request as the traffic log keeps it."""

    request_id: str
    time: float
    evaluation: bool
    student_version: str | None
    teacher_version: str | None
    items: list[KeptItem]

    @classmethod
    def from_row(cls, row: tuple) -> "KeptRequest":
        request_id, at, evaluation, student_version, teacher_version, items = row
        return cls(request_id, at, bool(evaluation), student_version, teacher_version, [KeptItem(*item) for item in json.loads(items)])


class TrafficLog(TurnBatchedLog):
    """This replica's traffic log: ``await append(requests)`` returns once they are committed in
    its traffic file, by a writer process of its own (``serving.traffic_store``).

    A process rather than the escalation log's writer thread: on a busy single-text path the
    thread's SQLite work and its GIL hand-offs with the event loop cost the loop a tenth of its
    requests/s (``tests/benchmarks/traffic_log_cost.sh``), where the loop's own part, building
    the rows and waiting for them, costs about 3 %. Here the event loop writes each turn's rows
    as one line to the child's pipe, and reads the child's acknowledgements, one line for each,
    in order, as the child commits them (``loop.add_reader``): nothing else in this process
    takes the GIL. The child commits whatever lines came meanwhile in one transaction, so that
    concurrent requests share an fsync, and acknowledges only after it (synchronous FULL). A
    line that cannot be committed fails its turn's appends and no others; the child's death
    fails every append it had not acknowledged, and the next append starts a new child on the
    same file.

    Appends may come from several event loops (one per ``asyncio.run`` in tests, one per request
    under a test client, in threads of their own): every loop that has appended watches the
    pipes, and any of them settles what the child acknowledges, in whichever loop awaits it."""

    def __init__(self, directory: Path, retention_s: float, on_error: Callable[[], None] | None = None):
        self.writer_id = os.urandom(WRITER_ID_CHARS // 2).hex()
        self.path = directory / f"traffic-{self.writer_id}.sqlite"
        super().__init__(f"the traffic log {self.path}")
        self.directory = directory
        self.retention_s = retention_s
        self.on_error = on_error  # called once per failed write (a turn's appends), in the thread that learns of it
        directory.mkdir(parents=True, exist_ok=True)
        self._sequence = itertools.count()
        self._lock = threading.Lock()  # hand-overs may come from loops in different threads
        self._unacknowledged: collections.deque[tuple[asyncio.Future, asyncio.AbstractEventLoop, int]] = collections.deque()
        self._outbox = bytearray()  # what the pipe to the child could not take yet
        self._acks = bytearray()  # a partly read acknowledgement line
        self._readers: set[asyncio.AbstractEventLoop] = set()  # loops watching the child's acknowledgements
        self._flushers: set[asyncio.AbstractEventLoop] = set()  # loops waiting to write the outbox
        self._child: subprocess.Popen | None = None
        self._retry_at = 0.0  # a child that did not start is not tried again before this (monotonic)
        self._write_fd = self._read_fd = -1  # the pipes to and from the child
        self._start_child()

    def new_request_id(self) -> str:
        """A request id this writer's rows can be found by, from any replica: the writer's id,
        the time in nanoseconds, then a sequence number (for two requests in one nanosecond).
        Ids that grow with time go in at the end of the table's key order: a commit then
        rewrites one leaf page instead of a page per row spread over the whole table
        (``tests/benchmarks/traffic_log_micro.py``: about a third less CPU per request kept
        than random ids, in a table of 200,000 rows)."""
        return f"{self.writer_id}{time.time_ns():016x}{next(self._sequence) & 0xFFFFFFFF:08x}"

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id (None between a child's death and the next append)."""
        child = self._child
        return child.pid if child is not None else None

    def purge(self, now: float | None = None) -> None:
        """Delete this writer's rows past retention, and the files of writers gone that long
        (its writer process does it every minute)."""
        purge(self.path, self.retention_s, now)

    def _start_child(self) -> None:
        """Start the writer process; it says ``ready`` once its file is open. Raises OSError if it
        does not (a directory it cannot write, say), and again without trying for a second."""
        if time.monotonic() < self._retry_at:
            raise OSError(f"the traffic log's writer process for {self.path} did not start a moment ago")
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen([sys.executable, "-m", "serving.traffic_store", str(self.path), repr(self.retention_s)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
        if not ready or child.stdout.readline() != b"ready\n":
            child.kill()
            self._retry_at = time.monotonic() + 1.0
            raise OSError(f"the traffic log's writer process for {self.path} did not start (exit code {child.wait()})")
        try:
            fcntl.fcntl(child.stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)  # room for bursts while the child commits
        except OSError:
            pass
        self._write_fd, self._read_fd = child.stdin.fileno(), child.stdout.fileno()
        os.set_blocking(self._write_fd, False)
        os.set_blocking(self._read_fd, False)
        self._child = child

    def _hand_over(self, records: list, done: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        """Send a turn's records to the child as one line. Sending each append at once, always or
        whenever the child was idle, cut the wait for the turn's end but cost more than it saved:
        the child committed, and fsynced, several times as often, and the ingress's CPU per
        request rose (``tests/benchmarks/traffic_log_cost.sh``)."""
        try:
            line = json.dumps(records).encode() + b"\n"
            with self._lock:
                if self._closed:  # closed during the turn
                    raise RuntimeError(f"{self.name} is closed")
                if self._child is None:
                    self._start_child()
                if loop not in self._readers:
                    self._watch(loop, self._read_fd, self._read_acks, self._readers)
                try:
                    self._send(line, loop)
                except OSError:  # the pipe's state is unknown: end this child, which fails what it holds
                    self._child.kill()
                    raise
                self._unacknowledged.append((done, loop, len(records)))
        except Exception as err:
            self._failed([(done, loop, err)])

    def _watch(self, loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None],
               watching: set[asyncio.AbstractEventLoop]) -> None:
        """Have ``loop`` (this thread's) call ``callback`` when ``fd`` is ready (under the lock)."""
        for gone in [other for other in watching if other.is_closed()]:
            watching.discard(gone)
        if watching is self._readers:
            loop.remove_reader(fd)  # an earlier child's pipe that had this number
            loop.add_reader(fd, callback)
        else:
            loop.remove_writer(fd)
            loop.add_writer(fd, callback)
        watching.add(loop)

    def _send(self, line: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Write ``line`` to the child, or what the pipe cannot take now to the outbox, which
        the loops that put it there write when the pipe has room (under the lock)."""
        if not self._outbox:
            try:
                line = line[os.write(self._write_fd, line):]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # the child is gone: the end of its acknowledgements fails this line too
                return
            if not line:
                return
        self._outbox += line
        if loop not in self._flushers:
            self._watch(loop, self._write_fd, self._flush, self._flushers)

    def _flush(self) -> None:
        """Write what the pipe could not take before (called by a loop that put some of it there)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._child is None:
                return
            if self._outbox:
                try:
                    del self._outbox[:os.write(self._write_fd, self._outbox)]
                except BlockingIOError:
                    return
                except OSError:  # gone, or the pipe's state unknown: the end of its acknowledgements fails what it holds
                    self._child.kill()
                    self._outbox.clear()
            if not self._outbox:
                loop.remove_writer(self._write_fd)
                self._flushers.discard(loop)

    def _read_acks(self) -> None:
        """Settle the appends the child acknowledged: ``+`` committed, ``-`` and a reason failed."""
        with self._lock:
            if self._child is None:
                return
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except BlockingIOError:  # another loop read it first
                return
            if not chunk:
                return self._child_gone()
            self._acks += chunk
            outcomes = self._acknowledged()
        self._finish(outcomes)

    def _acknowledged(self) -> list[tuple[asyncio.Future, asyncio.AbstractEventLoop, int | Exception]]:
        """The appends that the whole acknowledgement lines read so far settle (under the lock)."""
        end = self._acks.rfind(b"\n") + 1
        lines = bytes(self._acks[:end]).splitlines()
        del self._acks[:end]
        return [(done, loop, count if ack == b"+" else OSError(f"traffic log commit failed: {ack[1:].decode()}"))
                for ack, (done, loop, count) in zip(lines, [self._unacknowledged.popleft() for _ in lines])]

    def _child_gone(self) -> None:
        """The child exited (under the lock): fail what it had not acknowledged; the next append
        starts a new one."""
        code = self._child.wait()
        logger.error("traffic log: the writer process for %s exited (code %s) with %d write(s) unacknowledged",
                     self.path, code, len(self._unacknowledged))
        self._release_child()
        lost = [(done, loop, OSError(f"the traffic log's writer process exited (code {code}) before committing"))
                for done, loop, _ in self._unacknowledged]
        self._unacknowledged.clear()
        self._outbox.clear()
        self._acks.clear()
        self._failed(lost)

    def _release_child(self) -> None:
        """Stop watching the child's pipes and close them (under the lock, the child exited)."""
        self._unwatch_all()
        for pipe in (self._child.stdin, self._child.stdout):
            try:
                pipe.close()
            except OSError:  # what was left to write to a dead child
                pass
        self._child = None

    def _unwatch_all(self) -> None:
        """Stop every loop watching the child's pipes (under the lock)."""
        running = running_loop()
        read_fd, write_fd = self._read_fd, self._write_fd
        for loop in self._readers | self._flushers:
            if loop.is_closed():
                continue
            if loop is running or not loop.is_running():
                loop.remove_reader(read_fd)
                loop.remove_writer(write_fd)
            else:  # a loop of another thread, in its own time
                loop.call_soon_threadsafe(self._forget, loop, read_fd, write_fd)
        self._readers.clear()
        self._flushers.clear()

    def _forget(self, loop: asyncio.AbstractEventLoop, read_fd: int, write_fd: int) -> None:
        """Stop ``loop`` (this thread's) watching a gone child's pipes, unless it already watches
        a new child's that took their numbers."""
        with self._lock:
            if loop not in self._readers:
                loop.remove_reader(read_fd)
            if loop not in self._flushers:
                loop.remove_writer(write_fd)

    def _failed(self, outcomes: list) -> None:
        for _, _, err in outcomes:
            logger.error("traffic log: a write of %s failed: %r", self.path, err)
            if self.on_error is not None:
                try:
                    self.on_error()
                except Exception as count_err:  # a metrics hiccup must not stop the log
                    logger.warning("traffic log: counting a failure failed: %r", count_err)
        settle(outcomes)

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the child commit what it was sent and exit, and settle what it acknowledged.
        Later appends raise RuntimeError."""
        with self._lock:
            self._closed = True
            child = self._child
            if child is None:
                return
            self._unwatch_all()
            os.set_blocking(self._write_fd, True)
            os.set_blocking(self._read_fd, True)
            try:  # the rest of its input, then its end: it commits what it read, answers, exits
                acks, _ = child.communicate(bytes(self._outbox), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                acks, _ = child.communicate()
            self._acks += acks or b""
            outcomes = self._acknowledged()
            self._release_child()
            outcomes += [(done, loop, RuntimeError(f"{self.name} closed before committing"))
                         for done, loop, _ in self._unacknowledged]
            self._unacknowledged.clear()
            self._outbox.clear()
        self._finish(outcomes)

    def _finish(self, outcomes: list) -> None:
        """Settle appends (outside the lock): the failed ones counted and logged as failures."""
        self._failed([outcome for outcome in outcomes if isinstance(outcome[2], Exception)])
        settle([outcome for outcome in outcomes if not isinstance(outcome[2], Exception)])


class TrafficReader:
    """Finds kept requests by id in every replica's file (blocking: call it in a thread)."""

    def __init__(self, directory: Path, retention_s: float):
        self.directory = directory
        self.retention_s = retention_s
        self._connections: dict[Path, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    def find(self, request_ids: Sequence[str]) -> dict[str, KeptRequest]:
        """The kept requests among ``request_ids`` (an id not kept, or past retention, is absent)."""
        found: dict[str, KeptRequest] = {}
        since = time.time() - self.retention_s
        with self._lock:
            for request_id in dict.fromkeys(request_ids):
                db = self._connection(request_id[:WRITER_ID_CHARS])
                if db is None:
                    continue
                row = db.execute("SELECT * FROM requests WHERE id = ? AND time >= ?", (request_id, since)).fetchone()
                if row is not None:
                    found[request_id] = KeptRequest.from_row(row)
        return found

    def close(self) -> None:
        with self._lock:
            for db in self._connections.values():
                db.close()
            self._connections.clear()

    def _connection(self, writer_id: str) -> sqlite3.Connection | None:
        path = self.directory / f"traffic-{writer_id}.sqlite"
        db = self._connections.get(path)
        if db is None and writer_id.isalnum() and path.is_file():
            db = self._connections[path] = connect(path)
        return db
