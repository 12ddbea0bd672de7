"""The two file primitives that the local (one-host) stores are built on: a durable atomic
replace, and an exclusive lock between processes. Both are POSIX tools for one host: never
rely on them across machines or on a network file system."""

from __future__ import annotations

import fcntl
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably: a reader sees the old file or the
    new one, never half of it, and a crash leaves one of the two."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def file_lock(lock_file: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if absent) between processes of this
    host. With ``wait=False`` a lock held elsewhere raises ``BlockingIOError`` at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
