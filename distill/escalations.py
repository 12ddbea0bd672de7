"""The escalation log's record type and its reader (the writer lives in ``serving``).

The log is a directory of JSON Lines segments (``segment-*.jsonl``), one record per line,
appended and fsynced by one writer. A line is complete only once its newline is on disk, so
a crash mid-write leaves at most one torn final line, which the reader skips; records carry
a unique id, so a replayed write yields no duplicate: a whole read (``iter_records``,
``read_records``) yields each id once; a ``LogTail`` that follows the log remembers the ids of
its last ``window`` records only, and drops a copy that comes within them (see there).

What a replay duplicates, and where (``serving.log_writer``): a writer appends each write
whole to one segment of its own (its process id in the name) and never writes a record twice:
after a failed write it cuts the segment back (best effort) and goes on in a new segment, and
the served logs (``GroupCommitLog``) never retry a failed write. A copy comes only from a new
writer, in its own newer segment: a client re-appending the write it saw no acknowledgement
for (the last write of a writer killed mid-write), or a ``cascade batch`` re-run after a crash,
whose records keep their ids (``serving.bulk.record_id``) and which writes again the records of
the block it had logged but not yet output. Either way the original is in the last write of a
segment whose writer stopped, and the copy in another writer's segment, read after that one to
its end: remembering only the ids of segments still growing would miss it.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, Iterator, Sequence, TypeVar
from uuid import uuid4

import numpy as np
from pydantic import BaseModel, Field, ValidationError

SEGMENT_GLOB = "segment-*.jsonl"
DEDUP_WINDOW = 65_536  # ids a LogTail remembers: about 10 MiB (tests/benchmarks/log_tail.py)


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

    @classmethod
    def consulted(cls, labels: Sequence[str], text: str, reason: str, student_probs: np.ndarray | None, teacher_probs: np.ndarray,
                  student_version: str | None, teacher_version: str, **fields: Any) -> "EscalationRecord":
        """The record of one item the teacher was consulted on, from both models' probability rows
        (None: the student did not score it), each label its row's top one; ``fields`` sets the
        rest (``request_id``, ``id``, ``teacher_label_only``).

        >>> r = EscalationRecord.consulted(["a", "b"], "hi", "unsure", np.array([0.6, 0.4]), np.array([0.1, 0.9]),
        ...                                "s1", "t1", request_id="r1")
        >>> r.student_label, r.teacher_label, r.teacher_probs
        ('a', 'b', [0.1, 0.9])
        """
        scored = student_probs is not None
        return cls(text=text, reason=reason, student_label=labels[int(student_probs.argmax())] if scored else None,
                   teacher_label=labels[int(teacher_probs.argmax())], student_probs=student_probs.tolist() if scored else None,
                   teacher_probs=teacher_probs.tolist(), student_version=student_version if scored else None,
                   teacher_version=teacher_version, **fields)


def segments(directory: Path) -> list[Path]:
    """The log's segment files, oldest first (names sort by creation time)."""
    return sorted(directory.glob(SEGMENT_GLOB)) if directory.is_dir() else []


Record = TypeVar("Record", bound=BaseModel)


class LogTail(Generic[Record]):
    """Reads the log at ``directory`` incrementally: each pass over ``new_records()`` reads only
    the bytes appended since the previous pass (a watcher polls a growing log without
    re-reading it) and yields the complete, valid records among them. Any log of records with
    an ``id`` written this way (``distill.feedback`` too) reads the same.

    Each id once, within a window: a record is dropped when its id is among the ids of the last
    ``window`` records yielded (``DEDUP_WINDOW``); ``window=None`` remembers every id, which a
    whole read does (``iter_records``). So a tail that follows the log for months holds at most
    ``window`` ids instead of every id it ever read, and a copy still drops as long as fewer
    than ``window`` records were yielded between it and its original: for a retried write, what
    other writers appended until its new writer wrote it again; for a ``cascade batch`` re-run
    that answers in the same order, the crashed block's records (65,536 rows at most by
    default) plus what other writers appended since the crash. A copy later than that is
    yielded again; no current reader is hurt by it: ``read_records`` reads whole,
    ``distill.feedback.latest`` and ``serving.feedback.FeedbackLedger`` take the same record
    again as it was, and ``refresh --watch`` counts it once more toward its next round."""

    def __init__(self, directory: Path, record: type[Record] = EscalationRecord, window: int | None = DEDUP_WINDOW):
        if window is not None and window < 1:
            raise ValueError(f"window is a number of ids >= 1, or None for all; got {window!r}")
        self.directory = directory
        self.record = record
        self.window = window
        self._offsets: dict[Path, int] = {}  # per segment, the end of its last complete line read
        self._seen: set[str] = set()  # the ids remembered: those in _order (all ids without a window)
        self._order: deque[str] = deque()  # with a window, the ids remembered, oldest first

    def _first_time(self, record_id: str) -> bool:
        """Whether ``record_id`` is not among the ids remembered; remembers it."""
        if record_id in self._seen:
            return False
        self._seen.add(record_id)
        if self.window is not None:
            self._order.append(record_id)
            if len(self._order) > self.window:
                self._seen.remove(self._order.popleft())
        return True

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
                    if self._first_time(record.id):
                        yield record


def iter_records(directory: Path) -> Iterator[EscalationRecord]:
    """Every complete, valid record in the log, each id once however far apart its copies are,
    oldest first (it remembers every id it reads)."""
    return LogTail(directory, window=None).new_records()


def read_records(directory: Path) -> list[EscalationRecord]:
    """All records of the log at ``directory`` (see ``iter_records``)."""
    return list(iter_records(directory))
