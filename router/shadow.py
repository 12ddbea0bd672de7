"""Judging a shadow candidate on live traffic: paired counts and a verdict with confidence bounds.

A candidate student scores every cascade item beside the current one, its answers never
returned. Where the teacher's label is known (escalated and audited items) the two are compared
pair by pair; on every item, so is whether each would escalate at its own fitted policy. The
verdict promotes when, with one-sided ``z`` bounds, the candidate agrees with the teacher no
worse (within ``agreement_margin``) and escalates less; it rejects as soon as either is shown
the other way, or when ``max_items`` passed without a promotion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np

from router.errors import RouterError


@dataclass
class ShadowEvidence:
    """Paired counts of a candidate against the current student (mergeable across replicas)."""

    items: float = 0.0  # cascade items both scored
    known: float = 0.0  # of those, items whose teacher label is known
    current_agreed: float = 0.0
    candidate_agreed: float = 0.0
    only_candidate_right: float = 0.0  # known items the candidate got right and the current one wrong
    only_current_right: float = 0.0
    current_escalated: float = 0.0  # items each would escalate at its own fitted policy
    candidate_escalated: float = 0.0
    only_candidate_escalated: float = 0.0
    only_current_escalated: float = 0.0

    def add(self, current_label: np.ndarray, candidate_label: np.ndarray, teacher_label: np.ndarray, known: np.ndarray,
            current_escalates: np.ndarray, candidate_escalates: np.ndarray) -> None:
        """Add one request's items (``teacher_label`` is read only where ``known``)."""
        known = np.asarray(known, dtype=bool)
        current_right = (np.asarray(current_label) == np.asarray(teacher_label)) & known
        candidate_right = (np.asarray(candidate_label) == np.asarray(teacher_label)) & known
        current_escalates, candidate_escalates = np.asarray(current_escalates, bool), np.asarray(candidate_escalates, bool)
        self.items += len(known)
        self.known += int(known.sum())
        self.current_agreed += int(current_right.sum())
        self.candidate_agreed += int(candidate_right.sum())
        self.only_candidate_right += int((candidate_right & ~current_right).sum())
        self.only_current_right += int((current_right & ~candidate_right).sum())
        self.current_escalated += int(current_escalates.sum())
        self.candidate_escalated += int(candidate_escalates.sum())
        self.only_candidate_escalated += int((candidate_escalates & ~current_escalates).sum())
        self.only_current_escalated += int((current_escalates & ~candidate_escalates).sum())

    def merge(self, other: ShadowEvidence) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> ShadowEvidence:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ShadowSettings:
    """When the evidence is enough."""

    z: float = 1.645  # one-sided 95 % bounds
    agreement_margin: float = 0.005  # the candidate may agree this much less and still count as no worse
    min_known: int = 200  # known items before any promotion
    max_items: int = 20_000  # no promotion by then: rejected


@dataclass(frozen=True)
class ShadowVerdict:
    decision: Literal["promote", "reject", "wait"]
    reason: str
    agreement_gain: tuple[float, float, float]  # candidate minus current: lower bound, estimate, upper bound
    escalation_change: tuple[float, float, float]  # candidate minus current share of items escalated


def _paired_bounds(only_a: float, only_b: float, n: float, z: float) -> tuple[float, float, float]:
    """Bounds on the paired difference (only_a - only_b) / n (normal approximation, with half a
    discordant pair added to each side so that a few items claim no certainty)."""
    if n <= 0:
        return -1.0, 0.0, 1.0
    a, b = only_a + 0.5, only_b + 0.5
    diff = (only_a - only_b) / n
    spread = z * math.sqrt(max((a + b) / n**2 - ((a - b) / n) ** 2 / n, 0.0))
    return diff - spread, diff, diff + spread


def shadow_verdict(evidence: ShadowEvidence, settings: ShadowSettings = ShadowSettings()) -> ShadowVerdict:
    """Promote, reject, or wait for more evidence (see the module docstring)."""
    if settings.min_known < 1 or settings.max_items < 1:
        raise RouterError("min_known and max_items must be >= 1")
    gain = _paired_bounds(evidence.only_candidate_right, evidence.only_current_right, evidence.known, settings.z)
    change = _paired_bounds(evidence.only_candidate_escalated, evidence.only_current_escalated, evidence.items, settings.z)
    if evidence.known >= settings.min_known and gain[2] < -settings.agreement_margin:
        return ShadowVerdict("reject", f"agrees with the teacher less: {gain[1]:+.4f} (upper bound {gain[2]:+.4f})", gain, change)
    if evidence.known >= settings.min_known and change[0] > 0:
        return ShadowVerdict("reject", f"escalates more: {change[1]:+.4f} of items (lower bound {change[0]:+.4f})", gain, change)
    if evidence.known >= settings.min_known and gain[0] >= -settings.agreement_margin and change[2] < 0:
        return ShadowVerdict("promote", f"agrees no worse ({gain[1]:+.4f}, lower bound {gain[0]:+.4f}) and escalates less "
                             f"({change[1]:+.4f}, upper bound {change[2]:+.4f})", gain, change)
    if evidence.items >= settings.max_items:
        return ShadowVerdict("reject", f"not shown better after {evidence.items:.0f} items", gain, change)
    return ShadowVerdict("wait", f"{evidence.known:.0f} known of {settings.min_known} needed, {evidence.items:.0f} items", gain, change)
