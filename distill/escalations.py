"""The escalation log's record type and its reader (the writer lives in ``serving``).

The log is a directory of JSON Lines segments (``segment-*.jsonl``), one record per line,
appended and fsynced by one writer. A line is complete only once its newline is on disk, so
a crash mid-write leaves at most one torn final line, which the reader skips; records carry
a unique id, so a replayed write never yields a duplicate.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Generic, Iterator, TypeVar
from uuid import uuid4

from pydantic import BaseModel, Field, ValidationError

SEGMENT_GLOB = "segment-*.jsonl"


class EscalationRecord(BaseModel):
    """One item the teacher answered (or audited), with both models' full outputs."""

    id: str = Field(default_factory=lambda: uuid4().hex)
    request_id: str
    time: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    text: str
    reason: str  # "unsure", "forced" (mode=teacher) or "audit"
    student_label: str | None
    teacher_label: str
    student_probs: list[float] | None  # in the label order of the models (they share one)
    teacher_probs: list[float]  # the soft labels distillation learns from
    teacher_label_only: bool = False  # a black-box teacher gave its label alone: teacher_probs is one-hot, not soft
    student_version: str | None
    teacher_version: str


def segments(directory: Path) -> list[Path]:
    """The log's segment files, oldest first (names sort by creation time)."""
    return sorted(directory.glob(SEGMENT_GLOB)) if directory.is_dir() else []


Record = TypeVar("Record", bound=BaseModel)


class LogTail(Generic[Record]):
    """Reads the log at ``directory`` incrementally: each pass over ``new_records()`` reads only
    the bytes appended since the previous pass (a watcher polls a growing log without
    re-reading it) and yields the complete, valid records among them, each id once. Any log of
    records with an ``id`` written this way (``distill.feedback`` too) reads the same."""

    def __init__(self, directory: Path, record: type[Record] = EscalationRecord):
        self.directory = directory
        self.record = record
        self._offsets: dict[Path, int] = {}  # per segment, the end of its last complete line read
        self._seen: set[str] = set()

    def new_records(self) -> Iterator[Record]:
        """The records appended since the last call, oldest first."""
        for segment in segments(self.directory):
            offset = self._offsets.get(segment, 0)
            with segment.open("rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        # torn by a crash (never acknowledged) or still being written: read it again next time
                        break
                    offset += len(raw)
                    self._offsets[segment] = offset
                    try:
                        record = self.record.model_validate(json.loads(raw))
                    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError):
                        continue
                    if record.id not in self._seen:
                        self._seen.add(record.id)
                        yield record


def iter_records(directory: Path) -> Iterator[EscalationRecord]:
    """Every complete, valid record in the log, each id once, oldest first."""
    return LogTail(directory).new_records()


def read_records(directory: Path) -> list[EscalationRecord]:
    """All records of the log at ``directory`` (see ``iter_records``)."""
    return list(iter_records(directory))
