"""The traffic log's SQLite side, and the writer process that runs it
(``python -m serving.traffic_store PATH RETENTION_S``, started by ``serving.traffic.TrafficLog``).
Standard library only, so that the process starts in a few tens of milliseconds."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Sequence

logger = logging.getLogger("cascade")

PURGE_EVERY_S = 60.0
F_SETPIPE_SZ = 1031  # Linux's fcntl that sizes a pipe
PIPE_BYTES = 1 << 20  # the pipe to the writer process holds this much while the child commits
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    evaluation INTEGER NOT NULL,
    student_version TEXT,
    teacher_version TEXT,
    items TEXT NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS requests_time;
"""
# No index on time: a writer's ids are its id, then the time in nanoseconds (hex), so purging
# deletes a range of the primary key, and a commit updates one B-tree instead of two.
# a JSON array of KeptRequest tuples (JSON writes a named tuple as an array), a row each
INSERT_ALL = """
INSERT OR REPLACE INTO requests
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]')
FROM json_each(?)
"""


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
    return db


class TrafficFile:
    """One writer's SQLite file, written by ``TrafficLog``'s writer process: ``commit`` writes
    JSON arrays of kept requests in one fsynced transaction, and purges what is past retention
    now and then."""

    def __init__(self, path: Path, retention_s: float):
        self.path = path
        self.retention_s = retention_s
        self._db = connect(path)
        self._db.executescript(SCHEMA)
        self._alive = path.open("rb")  # held while this writer lives: nobody else purges its file
        fcntl.flock(self._alive, fcntl.LOCK_SH)
        self._purged_at = 0.0

    def commit(self, payloads: Sequence[bytes | str]) -> None:
        """Commit every payload (a JSON array of ``KeptRequest``s) or none of them; raises
        sqlite3.Error or OSError (a full disk) when none was."""
        self._db.execute("BEGIN")
        try:
            for payload in payloads:
                self._db.execute(INSERT_ALL, (payload,))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if time.monotonic() - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = time.monotonic()
            try:
                purge(self.path, self.retention_s, db=self._db)
            except Exception as err:  # the commit stands: purging is tried again later
                logger.error("purging %s failed: %r", self.path, err)

    def close(self) -> None:
        self._db.close()
        self._alive.close()


def purge(path: Path, retention_s: float, now: float | None = None, db: sqlite3.Connection | None = None) -> None:
    """Delete the rows of the traffic file at ``path`` past retention, and the files of other
    writers in its directory that have been gone that long."""
    now = time.time() if now is None else now
    older = (f"{path.stem.removeprefix('traffic-')}{int((now - retention_s) * 1e9):016x}",)  # ids kept before the cut
    if db is not None:
        db.execute("DELETE FROM requests WHERE id < ?", older)
    elif path.exists():  # not purged away by another writer
        with closing(connect(path)) as own:
            own.execute("DELETE FROM requests WHERE id < ?", older)
    for other in path.parent.glob("traffic-*.sqlite"):
        if other == path:
            continue
        try:
            if now - max(p.stat().st_mtime for p in files_of(other) if p.exists()) <= retention_s:
                continue
            with other.open("rb") as gone:
                fcntl.flock(gone, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer lives, only idle
                for p in files_of(other):
                    p.unlink(missing_ok=True)
        except (OSError, ValueError) as err:  # its writer lives, or another replica removed it meanwhile
            logger.debug("traffic log: not purging %s: %r", other, err)


def files_of(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def acknowledge(store: TrafficFile, lines: list[bytes]) -> bytes:
    """Commit ``lines`` in one transaction, and answer each: ``+`` committed, or ``-`` and the
    error. When the transaction fails, each line is tried in one of its own, so that a line that
    cannot be kept (or a full disk that has room again) fails no more than it must."""
    try:
        store.commit(lines)
        return b"+\n" * len(lines)
    except Exception as err:
        if len(lines) > 1:
            return b"".join(acknowledge(store, [line]) for line in lines)
        logger.error("committing to %s failed: %r", store.path, err)
        return b"-" + repr(err).replace("\n", " ").encode() + b"\n"


def main(argv: list[str]) -> None:
    """The writer process: ``python -m serving.traffic_store PATH RETENTION_S``. Reads lines of
    JSON arrays of kept requests from stdin; commits what came meanwhile in one transaction;
    answers each line, in order; exits at the end of its input, which is also when the replica
    that started it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the server: the replica closes its input
    logging.basicConfig(level=logging.INFO, format="%(asctime)s traffic writer %(levelname)s %(message)s")
    store = TrafficFile(Path(argv[0]), float(argv[1]))
    _write_all(1, b"ready\n")
    pending = b""
    while chunk := os.read(0, PIPE_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            _write_all(1, acknowledge(store, lines))
    store.close()

if __name__ == "__main__":
    main(sys.argv[1:])
