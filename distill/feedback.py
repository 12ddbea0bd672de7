"""Outcome feedback: the true label of an item the cascade answered, sent by a client through
``POST /v1/feedback`` (the writer lives in ``serving.feedback``), and its reader.

The feedback log is a directory of JSON Lines segments like the escalation log (same writer,
same durability: a record is acknowledged only once fsynced). Every record is kept: a changed
label is a new record naming the label it replaces, and the latest record of an item is its
feedback. Each record carries what refresh needs without the traffic log: the item's text (as
logged, redacted), the tier that answered it and every label the models gave it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Literal
from uuid import uuid4

from pydantic import BaseModel, Field

from distill.escalations import LogTail

class FeedbackRecord(BaseModel):
    """The true label of item ``index`` of request ``request_id``."""

    id: str = Field(default_factory=lambda: uuid4().hex)
    request_id: str
    index: int
    label: str  # the true label, one the models know
    time: float = Field(default_factory=time.time)  # unix seconds; the latest record of an item wins
    replaces: str | None = None  # the label this record changes, if the item had feedback before
    text: str  # the item's text as the traffic log kept it (redacted like escalation records)
    tier: Literal["student", "teacher"]  # which model answered the item
    answered: str  # the label the cascade answered
    student_label: str | None  # the student's label (None: the student did not score it)
    teacher_label: str | None  # the teacher's label (None: the teacher was not consulted)
    student_version: str | None
    teacher_version: str | None
    evaluation: bool = False  # the request was evaluation traffic: never trained on, only measured with
    confidence: float | None = None  # the student's calibrated confidence on the item (None: not scored)

    @property
    def key(self) -> tuple[str, int]:
        return self.request_id, self.index

    @property
    def correct(self) -> bool:
        """The cascade's answer was the true label."""
        return self.answered == self.label


def latest(records: Iterable[FeedbackRecord]) -> dict[tuple[str, int], FeedbackRecord]:
    """Each item's feedback: its latest record (by time; a tie goes to the later one read)."""
    items: dict[tuple[str, int], FeedbackRecord] = {}
    for record in records:
        held = items.get(record.key)
        if held is None or record.time >= held.time:
            items[record.key] = record
    return items


def read_feedback(directory: Path) -> dict[tuple[str, int], FeedbackRecord]:
    """Every item's feedback in the log at ``directory`` (empty when there is none)."""
    return latest(LogTail(directory, FeedbackRecord).new_records())
