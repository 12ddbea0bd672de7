"""The escalation (and feedback) log on disk: JSONL segments appended durably by one writer. A
batch of records is acknowledged only after its bytes are written and fsynced. Segments rotate
by size or age; a segment's name carries its writer's process id, so every ingress replica
writes segments of its own. ``distill.escalations`` reads them."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from distill.escalations import EscalationRecord
from serving.config import LogConfig


class SegmentWriter:
    """A single-writer, append-only, fsynced JSONL log in ``directory``; segment limits default
    to ``LogConfig``'s."""

    def __init__(self, directory: Path, max_bytes: int = LogConfig().segment_max_bytes,
                 max_seconds: float = LogConfig().segment_max_seconds):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._opened_at = 0.0
        self.records_written = 0
        self.bytes_written = 0

    def _segment(self):
        """The open segment, rotated when too big or too old."""
        if self._file is not None:
            too_big = self._file.tell() >= self.max_bytes
            too_old = time.monotonic() - self._opened_at >= self.max_seconds
            if not (too_big or too_old):
                return self._file
            self._file.close()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = self.directory / f"segment-{stamp}-{os.getpid()}.jsonl"
        self._file = path.open("ab")
        self._opened_at = time.monotonic()
        _fsync_directory(self.directory)  # the new file's name survives a crash too
        return self._file

    def append(self, records: Sequence[EscalationRecord]) -> int:
        """Write ``records`` and fsync; returns how many were written. Raises OSError (for
        example a full disk) without acknowledging anything."""
        if not records:
            return 0
        payload = b"".join(r.model_dump_json().encode() + b"\n" for r in records)
        segment = self._segment()
        start = segment.tell()
        try:
            segment.write(payload)
            segment.flush()
            os.fsync(segment.fileno())
        except BaseException:  # a full disk, or anything else mid-write: no torn bytes stay before later records
            self._abandon(segment, start)
            raise
        self.records_written += len(records)
        self.bytes_written += len(payload)
        return len(records)

    def _abandon(self, segment, start: int) -> None:
        """After a failed write, cut the segment back to its last acknowledged byte (best
        effort) and start a new segment next time, so no torn bytes precede later records."""
        try:
            segment.truncate(start)
        except OSError:
            pass
        try:
            segment.close()
        except OSError:
            pass
        self._file = None

    def close(self) -> None:
        """Close the open segment."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
