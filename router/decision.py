"""The cascade's per-item decision: pure, vectorised functions and the typed value they make.

A request is decided in two steps, around its one call to the teacher:

1. ``route``: from the request's mode, the student's probabilities and the policy (with an
   optional threshold override), the teacher budget and audit sampling: which items the policy
   wants the teacher to answer (``escalated``), which of those the budget turned away
   (``capped``), which confident items are audited, and so which items the teacher is asked
   about (``Route.ask``).
2. ``settle``: from that route and what the teacher did (answered, or why not): each item's
   tier, whether the teacher's answer came back for it, whether it is degraded and why, and
   its cost.

The meanings, which the HTTP API, the metrics, the escalation records and the V2 outputs share:

- ``escalated``: the policy wanted the teacher's answer (reason ``unsure``, or ``forced`` by
  mode teacher), whether or not it got it.
- ``consulted``: the teacher's answer for the item came back: it answered it (tier teacher) or
  audited it (reason ``audit``; the answer stays the student's).
- ``tier``: ``teacher`` when the teacher's answer is returned (escalated and consulted), else ``student``.
- ``degraded``: escalated but not answered by the teacher; ``cause`` says why (``CAUSES``).
- ``cost``: the student's units if the student scored the item, plus the teacher's if the
  teacher was consulted on it.

>>> from router.policy import EscalationPolicy
>>> plan = route("cascade", 2, np.array([[0.9, 0.1], [0.6, 0.4]]), EscalationPolicy(threshold=0.7))
>>> plan.ask.tolist()
[False, True]
>>> [d.tier for d in settle(plan, teacher_answered=True)]
['student', 'teacher']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

from router.audit import AuditSampler
from router.budget import TeacherRateLimiter
from router.cost import CostModel
from router.errors import RouterError
from router.policy import EscalationPolicy

Mode = Literal["cascade", "student", "teacher"]
MODES: tuple[str, ...] = ("cascade", "student", "teacher")
REASONS: tuple[str, ...] = ("confident", "unsure", "forced", "audit")
# why an escalated item was answered by the student: the budget turned it away, the teacher
# queue was full, the breaker was open, the call timed out, or it failed
CAUSES: tuple[str, ...] = ("teacher_budget", "teacher_overloaded", "teacher_circuit_open", "teacher_timeout", "teacher_unavailable")


@dataclass(frozen=True)
class Route:
    """Where a request's items go before the teacher is called; arrays of one entry per item."""

    mode: Mode
    reason: np.ndarray  # confident, unsure, forced or audit
    confidence: np.ndarray | None  # the student's calibrated confidence; None when it did not score the request
    escalated: np.ndarray  # the policy wants the teacher's answer
    capped: np.ndarray  # escalated items the teacher budget turned away
    audited: np.ndarray  # confident items also sent to the teacher
    audit_probability: np.ndarray | None = None  # each item's chance of an audit had it been confident; None: no audits

    @property
    def known_probability(self) -> np.ndarray:
        """Each item's chance of having its teacher label seen as routed: 1 if escalated (and
        not capped), its audit probability if confident (0 without audits); an estimate of the
        confident items weighs an audited one by the inverse of it."""
        audit = self.audit_probability if self.audit_probability is not None else np.zeros(len(self.escalated))
        return np.where(self.escalated & ~self.capped, 1.0, np.where(self.escalated, 0.0, audit))

    @property
    def ask(self) -> np.ndarray:
        """The items the teacher is asked about."""
        return (self.escalated & ~self.capped) | self.audited


@dataclass(frozen=True)
class Decision:
    """What happened to one item (see the module docstring for each field's meaning)."""

    tier: Literal["student", "teacher"]
    reason: str
    escalated: bool
    consulted: bool
    degraded: bool
    cause: str | None
    confidence: float | None
    student_scored: bool
    cost: float


@dataclass(frozen=True)
class Decisions:
    """The decisions of one request, as arrays (vectorised) and, iterated, as ``Decision`` values."""

    route: Route
    consulted: np.ndarray
    answered_by_teacher: np.ndarray
    degraded: np.ndarray
    cause: np.ndarray  # object array: a CAUSES entry or None
    student_scored: np.ndarray  # the student's probabilities are needed (and paid for) for the item
    cost: np.ndarray

    def __len__(self) -> int:
        return len(self.cost)

    def __getitem__(self, i: int) -> Decision:
        route = self.route
        return Decision(
            tier="teacher" if self.answered_by_teacher[i] else "student",
            reason=str(route.reason[i]),
            escalated=bool(route.escalated[i]),
            consulted=bool(self.consulted[i]),
            degraded=bool(self.degraded[i]),
            cause=self.cause[i],
            confidence=None if route.confidence is None else float(route.confidence[i]),
            student_scored=bool(self.student_scored[i]),
            cost=float(self.cost[i]),
        )

    def __iter__(self) -> Iterator[Decision]:
        return (self[i] for i in range(len(self)))


def route(
    mode: Mode,
    n: int,
    student_probs: np.ndarray | None = None,
    policy: EscalationPolicy | None = None,
    threshold: float | None = None,
    budget: TeacherRateLimiter | None = None,
    auditor: AuditSampler | None = None,
    privileged: bool = False,
) -> Route:
    """Route ``n`` items of one request.

    Mode ``cascade`` needs the student's probabilities and ``policy``: items whose confidence is
    below the threshold (``threshold`` overrides the policy's) are escalated. Mode ``teacher``
    escalates every item; mode ``student`` none. Every request counts toward the budget's window,
    and escalated items, forced ones included, are capped by it (least confident first; in mode
    teacher, the last items) unless ``privileged`` (an admin's request), whose items are counted
    but never capped. Audits sample confident items of cascade requests, and pause while the
    budget turns items away: they would exceed it.
    """
    if mode not in MODES:
        raise RouterError(f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise RouterError(f"n must be an int >= 0; got {n!r}")
    none = np.zeros(n, dtype=bool)
    confidence = None
    if mode == "cascade":
        if student_probs is None or policy is None:
            raise RouterError("mode cascade needs the student's probabilities and a policy")
        if len(student_probs) != n:
            raise RouterError(f"student_probs has {len(student_probs)} rows for {n} items")
        confidence, escalated = policy.scores_and_mask(student_probs, threshold)
        reason = np.where(escalated, "unsure", "confident").astype(object)
    else:
        escalated = np.full(n, mode == "teacher")
        reason = np.full(n, "forced", dtype=object)
    capped = none.copy()
    if budget is not None:
        wanted = int(escalated.sum())
        admitted = budget.admit(wanted, n, force=privileged)
        if admitted < wanted:
            order = np.flatnonzero(escalated)
            if confidence is not None:  # the least confident items get the teacher first
                order = order[np.argsort(confidence[order], kind="stable")]
            capped[order[admitted:]] = True
    audited, audit_probability = none, None
    if mode == "cascade" and auditor is not None:
        audit_probability = auditor.probabilities(confidence) if not capped.any() else np.zeros(n)
        audited = ~escalated & auditor.sample(n, audit_probability)
        reason[audited] = "audit"
    return Route(mode, reason, confidence, escalated, capped, audited, audit_probability)


def student_scores(mode: Mode, degraded: np.ndarray | bool) -> np.ndarray | bool:
    """Whether the student scored an item (its probabilities were needed, and its units paid):
    always, except in mode teacher, where it scores only the items the teacher did not answer,
    the ``degraded`` ones. Takes and gives one item's bool or an array of them.

    >>> student_scores("cascade", False), student_scores("teacher", False), student_scores("teacher", True)
    (True, False, True)
    """
    scored = np.logical_or(mode != "teacher", degraded)
    return bool(scored) if np.ndim(scored) == 0 else scored


def settle(plan: Route, teacher_answered: bool, cause: str | None = None, costs: CostModel = CostModel()) -> Decisions:
    """Each item's outcome once the teacher answered the items it was asked about
    (``teacher_answered``), or did not, for ``cause`` (one of ``CAUSES``)."""
    if not teacher_answered and plan.ask.any() and cause not in CAUSES:
        raise RouterError(f"a teacher that did not answer needs a cause, one of: {', '.join(CAUSES)}; got {cause!r}")
    consulted = plan.ask & teacher_answered
    answered_by_teacher = plan.escalated & consulted
    degraded = plan.escalated & ~answered_by_teacher
    causes = np.full(len(consulted), None, dtype=object)
    causes[degraded] = cause
    causes[plan.capped] = "teacher_budget"
    student_scored = student_scores(plan.mode, degraded)
    cost = costs.student_units * student_scored + costs.teacher_units * consulted
    return Decisions(plan, consulted, answered_by_teacher, degraded, causes, student_scored, cost.astype(float))
