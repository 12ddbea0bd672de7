"""Outcome feedback: ``POST /v1/feedback`` records the true label of answered items (found in the
traffic log, ``serving.traffic``) in the feedback log (``distill.feedback``), and ``FeedbackLedger``
reads that log back, from every replica, into live accuracy by tier. Ray-free."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from distill.escalations import LogTail
from distill.feedback import FeedbackRecord
from router.audit import wilson_interval
from serving.errors import InvalidInput, NotFound, TooLarge
from serving.traffic import KeptRequest, TrafficReader

TIERS = ("student", "teacher")
RETENTION_MARGIN_S = 3600.0  # kept past retention, for replicas whose clocks differ


class FeedbackItem(BaseModel):
    """The true label of item ``index`` of an earlier request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128, pattern="^[0-9a-f]+$", description="the request_id of a /v1/classify answer")
    index: int = Field(ge=0, description="the item's position in that request's inputs")
    label: str = Field(min_length=1, description="the true label: one the models know")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"items": [{"request_id": "…", "index": 0, "label": "card_arrival"}]}]})

    items: list[FeedbackItem] = Field(description="outcomes of earlier answers; a repeat is a no-op, a changed label replaces the earlier one")


class FeedbackResponse(BaseModel):
    recorded: int = Field(description="items whose feedback was written now (new or changed)")
    changed: int = Field(description="of those, items whose earlier label this one replaces")
    unchanged: int = Field(description="repeats of an item's current label: nothing written")


@dataclass
class Tally:
    items: int = 0
    correct: int = 0

    def add(self, correct: bool, sign: int = 1) -> None:
        self.items += sign
        self.correct += sign * int(correct)

    def figures(self) -> dict:
        # the interval of no items is null, as its accuracy is (router's is the vacuous (0, 1))
        interval = tuple(round(bound, 4) for bound in wilson_interval(self.correct, self.items)) if self.items else None
        return {"items": self.items, "correct": self.correct,
                "accuracy": round(self.correct / self.items, 4) if self.items else None, "interval_95": interval}


@dataclass(slots=True)
class HeldFeedback:
    """What the ledger keeps of an item's latest feedback: enough to count it, to take it back
    when a newer label replaces it, and to tell a repeat (not the record: its text stays on disk)."""

    time: float
    label: str
    tier: str
    correct: bool
    both: tuple[bool, bool] | None  # (student right, teacher right) where both models labelled the item
    student_version: str | None
    row: int | None  # its row in that version's outcomes (None: the student did not score it)


class Outcomes:
    """One student version's outcomes as live control bins them, one row per item, in arrays
    that grow by doubling: a step reads them without rebuilding them from every item."""

    def __init__(self, capacity: int = 1024):
        self.size = 0
        self.confidence = np.zeros(capacity)
        self.student_wrong = np.zeros(capacity, dtype=bool)
        self.teacher_wrong = np.zeros(capacity)  # NaN: the teacher was not consulted

    def put(self, row: int | None, confidence: float, student_wrong: bool, teacher_wrong: float) -> int:
        """Write an item's outcome in its ``row`` (None: a new row); returns the row."""
        if row is None:
            if self.size == len(self.confidence):
                for name in ("confidence", "student_wrong", "teacher_wrong"):
                    old = getattr(self, name)
                    setattr(self, name, np.concatenate([old, np.zeros_like(old)]))
            row, self.size = self.size, self.size + 1
        self.confidence[row], self.student_wrong[row], self.teacher_wrong[row] = confidence, student_wrong, teacher_wrong
        return row

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the rows written so far."""
        n = self.size
        return self.confidence[:n].copy(), self.student_wrong[:n].copy(), self.teacher_wrong[:n].copy()


@dataclass
class FeedbackLedger:
    """Every replica's feedback, read incrementally from the feedback log: each item's latest
    label, live accuracy by the tier that answered, on items both models labelled (the
    escalated and the audited ones) the student's accuracy against the teacher's, and per
    student version the outcomes live control steps with."""

    directory: Path
    # the traffic log's retention: feedback on an item answered longer ago is refused (404), so
    # nothing can replace its feedback and the ledger forgets its entry (its counts stay); None: keeps all
    retention_s: float | None = None
    latest: dict[tuple[str, int], HeldFeedback] = field(default_factory=dict)  # in the order read: about their feedback's time
    tiers: dict[str, Tally] = field(default_factory=lambda: {tier: Tally() for tier in TIERS})
    both_student: Tally = field(default_factory=Tally)  # the student's labels where both models gave one
    both_teacher: Tally = field(default_factory=Tally)  # the teacher's, on the same items
    by_student: dict[str, Outcomes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tail = LogTail(self.directory, FeedbackRecord)
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Read what every replica recorded since the last sync (blocking: call it in a thread)."""
        started = time.time()
        with self._lock:
            for record in self._tail.new_records():
                self._apply(record)
            if self.retention_s is not None:
                self._forget(started - self.retention_s - RETENTION_MARGIN_S)

    def _forget(self, cut: float) -> None:
        """Drop the entries whose feedback came before ``cut`` (retention and a margin before this
        sync began): their items were answered earlier still, so feedback on them is refused now,
        and a record not read yet was taken on an item answered within the window: none can
        replace a dropped entry."""
        stale = []
        for key, held in self.latest.items():
            if held.time >= cut:
                break
            stale.append(key)
        for key in stale:
            del self.latest[key]

    def _apply(self, record: FeedbackRecord) -> None:
        held = self.latest.get(record.key)
        if held is not None and record.time < held.time:
            return
        if held is not None:
            self._count(held, -1)
            del self.latest[record.key]  # re-entered at the end, after the entries of earlier feedback
        both = None
        if record.student_label is not None and record.teacher_label is not None:
            both = (record.student_label == record.label, record.teacher_label == record.label)
        row = None  # an item's outcome keeps its row when a newer label replaces it (same request, same version)
        if record.confidence is not None and record.student_label is not None and record.student_version is not None:
            teacher_wrong = math.nan if record.teacher_label is None else float(record.teacher_label != record.label)
            outcomes = self.by_student.setdefault(record.student_version, Outcomes())
            row = outcomes.put(held.row if held is not None and held.student_version == record.student_version else None, record.confidence, record.student_label != record.label, teacher_wrong)
        held = HeldFeedback(record.time, record.label, record.tier, record.correct, both, record.student_version, row)
        self.latest[record.key] = held
        self._count(held, 1)

    def _count(self, held: HeldFeedback, sign: int) -> None:
        self.tiers[held.tier].add(held.correct, sign)
        if held.both is not None:
            self.both_student.add(held.both[0], sign)
            self.both_teacher.add(held.both[1], sign)

    def outcomes(self, student_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every replica's feedback on items ``student_version`` scored, as live control bins it:
        the student's confidence, whether the student was wrong, whether the teacher was (NaN:
        not consulted). Syncs first (blocking: call it in a thread)."""
        self.sync()
        with self._lock:
            outcomes = self.by_student.get(student_version)
            return outcomes.arrays() if outcomes is not None else (np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0))

    def figures(self) -> dict:
        """``/v1/stats``' ``feedback``: per tier, items, correct, accuracy and its 95 % interval;
        ``both``: the student's and the teacher's accuracy on the items both labelled."""
        return {
            **{tier: tally.figures() for tier, tally in self.tiers.items()},
            "both": {"student": self.both_student.figures(), "teacher": self.both_teacher.figures()},
        }


class FeedbackDesk:
    """Checks and records feedback: every item must name a kept request and one of its items,
    with a label the models know; all are checked before any is written, and an item whose
    current feedback already has that label is left alone."""

    def __init__(self, traffic: TrafficReader, ledger: FeedbackLedger, append: Callable[[list[FeedbackRecord]], Awaitable[int]],
                 max_items: int, on_recorded: Callable[[FeedbackRecord], None] | None = None, keeping: bool = True):
        self.traffic = traffic
        self.keeping = keeping  # False: this replica keeps no traffic (feedback.keep_traffic), its answers cannot get feedback
        self.ledger = ledger
        self.append = append
        self.max_items = max_items
        self.on_recorded = on_recorded

    async def record(self, items: list[FeedbackItem], labels: Sequence[str]) -> FeedbackResponse:
        """Record ``items``' labels durably, or raise naming the first item that cannot be."""
        if not items:
            raise InvalidInput("items: expected at least one feedback item")
        if len(items) > self.max_items:
            raise TooLarge(f"items: {len(items)} feedback items, at most {self.max_items} per request")
        known = set(labels)
        for i, item in enumerate(items):
            if item.label not in known:
                raise InvalidInput(f"items[{i}].label: {item.label!r} is not a label the models know")
        kept, _ = await asyncio.gather(asyncio.to_thread(self.traffic.find, [item.request_id for item in items]),
                                       asyncio.to_thread(self.ledger.sync))
        records: dict[tuple[str, int], FeedbackRecord] = {}
        unchanged = 0
        for i, item in enumerate(items):
            request = kept.get(item.request_id)
            if request is None:
                why = (f"unknown, or answered more than {self.traffic.retention_s / 3600:g} hours ago" if self.keeping
                       else "this service keeps no traffic: feedback.keep_traffic is false")
                raise NotFound(f"items[{i}].request_id: {item.request_id!r} is not a kept request ({why})")
            if item.index >= len(request.items):
                raise NotFound(f"items[{i}].index: request {item.request_id!r} had {len(request.items)} item(s), no index {item.index}")
            key = (item.request_id, item.index)
            prior = self.ledger.latest.get(key)
            current = records.get(key) or prior
            if current is not None and current.label == item.label:
                unchanged += 1
                continue
            records[key] = self._record(item, request, prior)
        written = list(records.values())
        if written:
            await self.append(written)
            if self.on_recorded is not None:
                for record in written:
                    self.on_recorded(record)
        return FeedbackResponse(recorded=len(written), changed=sum(r.replaces is not None for r in written), unchanged=unchanged)

    @staticmethod
    def _record(item: FeedbackItem, request: KeptRequest, held: FeedbackRecord | None) -> FeedbackRecord:
        kept = request.items[item.index]
        return FeedbackRecord(
            request_id=item.request_id, index=item.index, label=item.label, replaces=held.label if held else None,
            text=kept.text, tier=kept.tier, answered=kept.answered, student_label=kept.student_label,
            teacher_label=kept.teacher_label, student_version=request.student_version,
            teacher_version=request.teacher_version, evaluation=request.evaluation, confidence=kept.confidence,
        )
