"""Online goal control across replicas: each ingress replica collects live evidence from the
requests it answers, and once a second merges it into one shared document (``LiveState`` in the
cascade's ``StateStore``, a read-modify-write), where the controller (``router.controller``) steps once per
``update_every`` new items. Every replica reads the live threshold back from that document, so
all replicas route alike and a restarted or added replica starts from it.

Accuracy goals are held through live accuracy once outcome feedback on the student's answers
suffices (``router.controller``): the stepping replica reads every replica's feedback from the
feedback log (``outcomes``, ``serving.feedback.FeedbackLedger.outcomes``).

A newly promoted student starts control afresh (the state names the student it belongs to),
from a safe point: ``routing.threshold`` when set, else the top of the measure's range, where
every item goes to the teacher, agrees by definition and is known; the first steps (one per
``update_every`` items) come down as far as that complete evidence bounds. Its very first
answers are routed there too: a replica routes a student the state does not name yet at the
point control would start it, until its next sync puts it in the state. Starting from the
fitted threshold instead served a shifted stream under the goal until the evidence had
climbed to it. A student whose fitted policy escalates everything (a seed student in shadow)
is held there: control does not undo it. A replica whose model servers still answer with the
previous student for a while after a promotion (they swap one by one) routes those answers at
that student's last live threshold, and does not bring it back: evidence of a student the
registry does not point at is dropped while the state's student is the one it points at, and
for ``stale_s`` after the switch from it; a rollback (the registry pointing at it again)
switches back. The state also keeps a short history of the live figures
for the dashboard, the same whichever replica answers."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from serving.cascade import Evidence

from distill.registry import Registry
from router import (ControlSettings, EscalationPolicy, LiveEvidence, LiveOutcomes, RouterError, TargetAccuracy, TeacherBudget,
                    agreement_target, certified_start, control_step, parse_goal, threshold_grid)
from router.controller import EVIDENCE_FORMAT, DriftingEvidence
from serving.api import LiveStatus
from serving.stores import LIVE_DOCUMENT, SHADOW_DOCUMENT, SYNC_EVERY_S, StateStore

logger = logging.getLogger("cascade")
HISTORY_POINTS = 720  # live figures kept for the dashboard: an hour at one update each 5 s


class LiveState(BaseModel):
    """The live-control document that every replica shares: the student it belongs to and what
    control reports of it (``status``), its evidence, where control stands on the evidence's
    threshold grid, and the student it replaced."""

    status: LiveStatus
    evidence: dict[str, Any]  # LiveEvidence.to_dict()
    index: int  # the live threshold is the grid's [index]
    floor: int = 0  # the lowest index control may take (a seed student is held at the top)
    since_step: float = 0.0  # items merged since the last step
    history: list[list[Any]] = []  # [unix time, threshold, estimate, bound, held], oldest first, for the dashboard
    started_at: float = 0.0  # when control started this student (unix time)
    previous: str | None = None  # the student it replaced, and that student's last live threshold
    previous_threshold: float | None = None

    @classmethod
    def parse(cls, document: dict | None) -> "LiveState | None":
        return cls.model_validate(document) if document is not None else None


class LiveControl:
    """One replica's side of online control (see the module docstring)."""

    def __init__(self, registry: Registry, state: StateStore, goal: str, teacher_budget: float,
                 start_threshold: float | None = None, settings: ControlSettings = ControlSettings(), update_every: int = 200,
                 sync_every_s: float = SYNC_EVERY_S, on_status: Callable[[LiveStatus], None] | None = None, stale_s: float = 60.0,
                 outcomes: Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 audit_rate: float = 0.0):
        self.registry = registry
        self.state = state
        self.clock, self.wall_clock = clock, wall_clock  # injectable: tests step time instead of sleeping
        self.goal = parse_goal(goal)
        self.teacher_budget = teacher_budget
        self.start_threshold = start_threshold  # routing.threshold; None: the top of each student's range
        self.settings = settings
        self.update_every = update_every
        self.sync_every_s = sync_every_s
        self.on_status = on_status
        self.stale_s = stale_s
        self.outcomes = outcomes  # a student version's outcome feedback (FeedbackLedger.outcomes), for accuracy goals
        self.audit_rate = audit_rate  # routing.audit_rate: the average the audit allocation keeps
        self.status = LiveStatus(goal=str(self.goal))
        self._audit_table: tuple[str, np.ndarray, np.ndarray] | None = None  # student, grid, per-bin audit probability
        self._starts: dict[str, tuple[int, int, DriftingEvidence | None]] = {}  # per new student: where control starts it
        self._deltas: dict[str, tuple[EscalationPolicy, LiveEvidence]] = {}  # new evidence per student version
        self._latest: str | None = None  # the student version observed last
        self._previous: tuple[str | None, float | None] = (None, None)  # the student the state's replaced, its last threshold
        self._synced_at = float("-inf")
        self._syncing = False

    def observe(self, evidence: Evidence) -> None:
        """Add one cascade request's evidence: its items' confidence, which have a known
        teacher label, and where the student agreed with it."""
        version, policy = evidence.student.version, evidence.policy
        if version not in self._deltas:
            self._deltas[version] = (policy, LiveEvidence(threshold_grid(policy.measure, evidence.student.probs.shape[1])))
        self._deltas[version][1].add(evidence.plan.confidence, evidence.known, evidence.agreed)
        self._latest = version

    def threshold(self, student_version: str | None, policy: EscalationPolicy | None = None, classes: int | None = None) -> float | None:
        """The live threshold for ``student_version``'s answers; None: control is off for it.
        The shared state's for the student it names, and its last for the one it replaced (a
        replica not yet swapped); a student it does not name yet (its first answers, before this
        replica's next sync puts it there) starts where control would start it, given its
        ``policy`` and number of ``classes`` (None without them)."""
        if student_version is None:
            return None
        if self.status.student == student_version:
            return self.status.threshold
        if student_version == self._previous[0]:
            return self._previous[1]
        if policy is None or classes is None or not self._controllable(policy):
            return None
        grid = threshold_grid(policy.measure, classes)
        return float(grid[self._start(student_version, policy, grid)[0]])

    def audit_probabilities(self, student_version: str | None, confidence: np.ndarray) -> np.ndarray | None:
        """Each confident item's audit probability under the shared allocation of the student the
        state names (``router.certify.allocate_audits``); None for another student (audits then
        fall back to ``routing.audit_rate`` for all)."""
        table = self._audit_table
        if table is None or table[0] != student_version:
            return None
        return table[2][np.searchsorted(table[1], confidence, side="right")]

    def _controllable(self, policy: EscalationPolicy) -> bool:
        """Whether control can hold the goal for this student (an accuracy goal needs its validated agreement)."""
        try:
            agreement_target(self.goal, policy.validation)
        except RouterError:
            return False
        return True

    def _start(self, version: str, policy: EscalationPolicy, grid: np.ndarray) -> tuple[int, int, DriftingEvidence | None]:
        """Where control starts a new student, the floor it never goes below (grid indices), and
        the evidence it starts from: ``routing.threshold`` when set; for a budget goal the fitted
        threshold (more teacher is not its safe side); a student judged in shadow starts from
        its shadow's evidence, at the cheapest threshold that evidence certifies; else the top
        of the range (the safe start), where a student whose fitted policy escalates everything
        is also held. Kept per student until the state names it."""
        if version in self._starts:
            return self._starts[version]
        top = len(grid) - 1
        if self.start_threshold is not None or isinstance(self.goal, TeacherBudget):
            start = self.start_threshold if self.start_threshold is not None else policy.threshold
            return int(np.abs(grid - start).argmin()), 0, None
        escalates_all = policy.threshold >= grid[top] and all(t >= grid[top] for t in policy.class_thresholds.values())
        inherited = None if escalates_all else shadow_evidence(self.state, version, grid)
        index = top
        if inherited is not None and self._controllable(policy):
            index = certified_start(inherited.current(), self.goal, self.teacher_budget, policy.validation, self.settings).index
        self._starts = {version: (index, top if escalates_all else 0, inherited)}
        return self._starts[version]

    async def tick(self) -> None:
        """Sync with the shared state if ``sync_every_s`` has passed, or a tenth of it when this
        replica serves a student the shared state does not name, so that a promotion reaches the
        shared state, and every replica, at once (off the event loop)."""
        wait = self.sync_every_s if self._latest in (None, self.status.student) else self.sync_every_s / 10
        if self._syncing or self.clock() - self._synced_at < wait:
            return
        self._syncing = True
        try:
            await asyncio.to_thread(self.sync)
        except Exception as err:  # control is best effort: routing goes on with the last threshold
            logger.error("live control: cannot sync: %r", err)
        finally:
            self._synced_at = self.clock()
            self._syncing = False

    def sync(self) -> LiveStatus:
        """Merge this replica's new evidence into the shared state, step the controller when
        enough is new, and read the state back."""
        deltas, latest = self._deltas, self._latest
        self._deltas = {}
        feedback = self._feedback_due(deltas)

        def merged(document: dict | None) -> dict:
            state = LiveState.parse(document)
            for version in sorted(deltas, key=lambda v: v == latest):  # the student observed last goes last
                state = self._merged(state, version, *deltas[version], feedback.get(version))
            return state.model_dump(mode="json")

        state = LiveState.parse(self.state.update(LIVE_DOCUMENT, merged) if deltas else self.state.read(LIVE_DOCUMENT))
        if state is not None:
            self.status = state.status
            self._previous = (state.previous, state.previous_threshold)
            self._starts.pop(state.status.student, None)
            if self.audit_rate > 0 and _same_format(state):
                current = DriftingEvidence.from_dict(state.evidence).current()
                self._audit_table = (state.status.student, current.grid, current.audit_probabilities(state.index, self.audit_rate))
            if self.on_status is not None:
                self.on_status(self.status)
        return self.status

    def _stale(self, state: LiveState, version: str) -> bool:
        """Whether another student's evidence comes from a replica not yet swapped: not the
        registry's current student, while the state's is, or while the state switched from it
        less than ``stale_s`` ago (not a rollback: the registry would point at it again)."""
        current = self.registry.current("student")
        recent = state.previous == version and self.wall_clock() - state.started_at < self.stale_s
        return current != version and (current == state.status.student or recent)

    def _feedback_due(self, deltas: dict[str, tuple[EscalationPolicy, LiveEvidence]]) -> dict[str, tuple]:
        """Outcome feedback of the students this sync will step, read before the shared lock is
        taken: ``outcomes`` reads every replica's new feedback from disk, and under the lock that
        read would hold up every other replica's sync. A look at the state without the lock says
        which will step (the file is replaced atomically); a step it did not foresee reads its
        feedback under the lock."""
        if self.outcomes is None or not isinstance(self.goal, TargetAccuracy) or not deltas:
            return {}
        state = LiveState.parse(self.state.read(LIVE_DOCUMENT))
        due = {}
        for version, (_, delta) in deltas.items():
            since_step = state.since_step if state is not None and state.status.student == version else 0.0
            if since_step + delta.items >= self.update_every:
                due[version] = self.outcomes(version)
        return due

    def _merged(self, state: LiveState | None, version: str, policy: EscalationPolicy, delta: LiveEvidence,
                feedback: tuple | None = None) -> LiveState:
        if state is not None and state.status.student != version and self._stale(state, version):
            return state
        if state is None or state.status.student != version or not _same_grid(state, delta.grid):
            state = self._started(state, version, policy, delta.grid)
        evidence = DriftingEvidence.from_dict(state.evidence)
        if evidence.merge(delta, self.settings):
            state.status = state.status.model_copy(update={"drift_restarts": state.status.drift_restarts + 1})
        state.since_step += delta.items
        state.evidence = evidence.to_dict()
        if state.since_step < self.update_every or state.status.threshold is None:  # None: control off
            return state
        current = evidence.current()
        outcomes = None
        if self.outcomes is not None and isinstance(self.goal, TargetAccuracy):
            outcomes = LiveOutcomes.from_items(current.grid, *(feedback if feedback is not None else self.outcomes(version)))
        step = control_step(current, state.index, self.goal, self.teacher_budget, policy.validation, self.settings,
                            state.floor, outcomes)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        state.index, state.since_step = step.index, 0.0
        near, far = _audit_summary(current, step.index, self.audit_rate)
        state.status = state.status.model_copy(update=dict(
            threshold=step.threshold, estimate=step.estimate, bound=step.bound, target=step.target, held=step.held,
            budget_limited=step.budget_limited, through=step.through, feedback_items=outcomes.total if outcomes is not None else 0.0,
            evidence_items=current.items, known_items=float(current.known.sum()), audit_near=near, audit_far=far, updated_at=now))
        state.history = (state.history + [[self.wall_clock(), step.threshold, step.estimate, step.bound, step.held]])[-HISTORY_POINTS:]
        return state

    def _started(self, state: LiveState | None, version: str, policy: EscalationPolicy, grid: np.ndarray) -> LiveState:
        """The state of a student control starts now (``_start``), replacing ``state``'s."""
        index, floor, inherited = self._start(version, policy, grid)
        controllable = self._controllable(policy)
        if not controllable:
            logger.error("live control off for %s: goal %s needs the policy's validated teacher_agreement", version, self.goal)
        evidence = inherited if inherited is not None else DriftingEvidence.empty(grid)
        status = LiveStatus(goal=str(self.goal), student=version, fitted_threshold=policy.threshold,
                            threshold=float(grid[index]) if controllable else None,
                            started_from="shadow" if inherited is not None else "safe_start",
                            start_threshold=float(grid[index]) if controllable else None)
        if inherited is not None:
            logger.info("live control starts %s from its shadow's evidence (%.0f items) at %.4f", version, inherited.current().items, grid[index])
        return LiveState(status=status, evidence=evidence.to_dict(), index=index, floor=floor, started_at=self.wall_clock(),
                         previous=None if state is None else state.status.student,
                         previous_threshold=None if state is None else state.status.threshold)

    def history(self) -> list[list[Any]]:
        """The shared history of live figures: [unix time, threshold, estimate, bound, held], oldest first."""
        state = LiveState.parse(self.state.read(LIVE_DOCUMENT))
        return state.history if state is not None else []


def read_live_status(state: StateStore) -> LiveStatus | None:
    """Online control's shared status, as every replica last left it; None before any sync."""
    live = LiveState.parse(state.read(LIVE_DOCUMENT))
    return live.status if live is not None else None


def shadow_evidence(state: StateStore, version: str, grid: np.ndarray) -> DriftingEvidence | None:
    """The evidence a shadow gathered of candidate ``version`` on live traffic, on its own
    confidence bins (``serving.shadow``), if the shared shadow document holds it on ``grid``."""
    document = state.read(SHADOW_DOCUMENT)
    live = (document or {}).get("live")
    if document is None or document.get("version") != version or live is None:
        return None
    try:
        evidence = LiveEvidence.from_dict(live)
    except (RouterError, KeyError, ValueError):
        return None
    return DriftingEvidence(evidence, LiveEvidence(grid)) if np.array_equal(evidence.grid, grid) and evidence.items > 0 else None


def _same_format(state: LiveState) -> bool:
    return state.evidence.get("evidence", {}).get("format") == EVIDENCE_FORMAT


def _same_grid(state: LiveState, grid: np.ndarray) -> bool:
    return _same_format(state) and state.evidence["evidence"]["grid"] == grid.tolist()


def _audit_summary(evidence: LiveEvidence, index: int, rate: float, near: int = 10) -> tuple[float | None, float | None]:
    """The mean audit probability of the ``near`` grid steps just above the threshold, and of the
    rest above (routed-weighted); None without audits or routed items there."""
    if rate <= 0:
        return None, None
    probabilities = evidence.audit_probabilities(index, rate)
    figures = []
    for part in (slice(index + 1, index + 1 + near), slice(index + 1 + near, None)):
        routed = evidence.routed[part]
        figures.append(float((probabilities[part] * routed).sum() / routed.sum()) if routed.sum() > 0 else None)
    return figures[0], figures[1]
