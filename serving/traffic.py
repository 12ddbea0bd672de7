"""The traffic log: every answered request, kept for a retention window so that outcome
feedback (``POST /v1/feedback``) can name any item the cascade answered, including those the
student answered alone, which the escalation log never sees.

Each ingress replica writes its own SQLite file (``traffic-<writer>.sqlite``, WAL, synchronous
FULL): one row per request, committed by the replica's ``GroupCommitLog`` thread before the
answer goes out, the escalation log's guarantee. A request id starts with its writer's id, so
any replica finds a request in one indexed lookup, in the file that holds it, after a restart
too. SQLite rather than JSON Lines because feedback needs lookups by id over millions of rows,
and retention needs deletes; one file per writer because nothing then waits on another
replica's lock. Rows past the retention window are deleted, and so are the files of replicas
that have been gone that long."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence

logger = logging.getLogger("cascade")

WRITER_ID_CHARS = 8  # a request id's first characters: the id of the replica that kept it
PURGE_EVERY_S = 60.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    evaluation INTEGER NOT NULL,
    student_version TEXT,
    teacher_version TEXT,
    items TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
"""
# a JSON array of KeptRequest tuples (JSON writes a named tuple as an array), a row each
INSERT_ALL = """
INSERT OR REPLACE INTO requests
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]')
FROM json_each(?)
"""


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


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
    return db


class TrafficWriter:
    """This replica's traffic file: ``append`` commits rows durably (a ``GroupCommitLog``'s
    writer: it calls ``append`` from one thread) and purges what is past retention."""

    def __init__(self, directory: Path, retention_s: float):
        self.directory = directory
        self.retention_s = retention_s
        directory.mkdir(parents=True, exist_ok=True)
        self.writer_id = os.urandom(WRITER_ID_CHARS // 2).hex()
        self._sequence = itertools.count()
        self.path = directory / f"traffic-{self.writer_id}.sqlite"
        self._db = _connect(self.path)
        self._db.executescript(SCHEMA)
        self._purged_at = 0.0
        self.records_written = 0
        self.bytes_written = 0

    def new_request_id(self) -> str:
        """A request id this writer's rows can be found by, from any replica: the writer's id,
        the time in nanoseconds, then a sequence number (for two requests in one nanosecond).
        Ids that grow with time go in at the end of the table's key order: a commit then
        rewrites one leaf page instead of a page per row spread over the whole table
        (``tests/benchmarks/traffic_log_micro.py``: about a third less CPU per request kept
        than random ids, in a table of 200,000 rows)."""
        return f"{self.writer_id}{time.time_ns():016x}{next(self._sequence) & 0xFFFFFFFF:08x}"

    def append(self, requests: Sequence[KeptRequest]) -> int:
        """Commit ``requests`` (one transaction, fsynced); raises without acknowledging any. One
        statement takes them apart from one JSON array, and in autocommit mode that statement is
        the whole transaction: one call into SQLite, where ``executemany`` between BEGIN and COMMIT
        released and took back the GIL once a row, each time from a busy event loop."""
        payload = json.dumps(requests)
        self._db.execute(INSERT_ALL, (payload,))
        self.records_written += len(requests)
        self.bytes_written += len(payload)
        if time.monotonic() - self._purged_at >= PURGE_EVERY_S:
            self.purge()
        return len(requests)

    def purge(self, now: float | None = None) -> None:
        """Delete this writer's rows past retention, and the files of writers gone that long."""
        now = time.time() if now is None else now
        self._purged_at = time.monotonic()
        self._db.execute("DELETE FROM requests WHERE time < ?", (now - self.retention_s,))
        for path in self.directory.glob("traffic-*.sqlite"):
            if path == self.path:
                continue
            try:
                if now - max(p.stat().st_mtime for p in _files_of(path) if p.exists()) > self.retention_s:
                    for p in _files_of(path):
                        p.unlink(missing_ok=True)
            except (OSError, ValueError) as err:  # another replica removed it meanwhile
                logger.debug("traffic log: purging %s: %r", path, err)

    def close(self) -> None:
        self._db.close()


def _files_of(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


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
            db = self._connections[path] = _connect(path)
        return db
