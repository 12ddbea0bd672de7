"""Online goal control across replicas: each ingress replica collects live evidence from the
requests it answers, and once a second merges it into one shared state file beside the
registry, under a file lock, where the controller (``router.controller``) steps once per
``update_every`` new items. Every replica reads the live threshold back from that file, so
all replicas route alike, a restarted or added replica starts from it, and a newly promoted
student starts it afresh (the state names the student it belongs to). The state also keeps a
short history of the live figures for the dashboard, the same whichever replica answers."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from serving.cascade import Evidence

from router import ControlSettings, EscalationPolicy, LiveEvidence, RouterError, control_step, parse_goal, threshold_grid
from serving.shared_state import locked, read_json, write_json

logger = logging.getLogger("cascade")
LIVE_STATE_FILE = "live.json"  # in the registry's root directory
HISTORY_POINTS = 720  # live figures kept for the dashboard: an hour at one update each 5 s


class LiveStatus(BaseModel):
    """What ``/v1/models`` and the metrics report of online control."""

    goal: str
    student: str | None = None  # the student version the evidence belongs to
    fitted_threshold: float | None = None
    threshold: float | None = None  # the live threshold; None until the controller has stepped
    estimate: float | None = None  # served agreement (agreement and accuracy goals) or teacher share (budget goals)
    bound: float | None = None  # its one-sided 95 % bound
    target: float | None = None
    held: bool | None = None  # the goal holds at the live threshold, with its bound
    budget_limited: bool = False  # the goal needs more teacher than routing.teacher_budget allows
    evidence_items: float = 0.0  # routed items behind the estimate (aged)
    known_items: float = 0.0  # of those, items whose teacher label is known
    updated_at: str | None = None


class LiveControl:
    """One replica's side of online control (see the module docstring)."""

    def __init__(self, registry_root: Path, goal: str, teacher_budget: float, start_threshold: float | None = None,
                 settings: ControlSettings = ControlSettings(), update_every: int = 200, sync_every_s: float = 1.0,
                 on_status: Callable[[LiveStatus], None] | None = None):
        self.path = Path(registry_root) / LIVE_STATE_FILE
        self.goal = parse_goal(goal)
        self.teacher_budget = teacher_budget
        self.start_threshold = start_threshold  # routing.threshold; None: each student's fitted one
        self.settings = settings
        self.update_every = update_every
        self.sync_every_s = sync_every_s
        self.on_status = on_status
        self.status = LiveStatus(goal=str(self.goal))
        self._delta: LiveEvidence | None = None
        self._student: tuple[str, EscalationPolicy, int] | None = None  # version, policy, labels
        self._synced_at = float("-inf")
        self._syncing = False

    def observe(self, evidence: Evidence) -> None:
        """Add one cascade request's evidence: its items' confidence, which have a known
        teacher label, and where the student agreed with it."""
        version, policy = evidence.student.version, evidence.policy
        if self._student is None or self._student[0] != version:
            self._student = (version, policy, evidence.student.probs.shape[1])
            self._delta = LiveEvidence(threshold_grid(policy.measure, evidence.student.probs.shape[1]))
        self._delta.add(evidence.plan.confidence, evidence.known, evidence.agreed)

    def threshold(self, student_version: str | None) -> float | None:
        """The live threshold for ``student_version``, once the controller has stepped for it."""
        if student_version is None or self.status.student != student_version:
            return None
        return self.status.threshold

    async def tick(self) -> None:
        """Sync with the shared state if ``sync_every_s`` has passed (off the event loop)."""
        if self._syncing or time.monotonic() - self._synced_at < self.sync_every_s:
            return
        self._syncing = True
        try:
            await asyncio.to_thread(self.sync)
        except Exception as err:  # control is best effort: routing goes on with the last threshold
            logger.error("live control: cannot sync %s: %r", self.path, err)
        finally:
            self._synced_at = time.monotonic()
            self._syncing = False

    def sync(self) -> LiveStatus:
        """Merge this replica's new evidence into the shared state, step the controller when
        enough is new, and read the state back."""
        delta, student = self._delta, self._student
        self._delta = LiveEvidence(delta.grid) if delta is not None else None
        with locked(self.path):
            state = read_json(self.path)
            if student is not None and delta is not None:
                state = self._merged(state, student, delta)
                write_json(self.path, state)
        if state is not None:
            self.status = LiveStatus.model_validate(state["status"])
            if self.on_status is not None:
                self.on_status(self.status)
        return self.status

    def _merged(self, state: dict | None, student: tuple[str, EscalationPolicy, int], delta: LiveEvidence) -> dict:
        version, policy, _ = student
        if state is None or state["status"]["student"] != version or state["evidence"]["grid"] != delta.grid.tolist():
            start = self.start_threshold if self.start_threshold is not None else policy.threshold
            index = int(np.abs(delta.grid - start).argmin())
            state = {"status": LiveStatus(goal=str(self.goal), student=version, fitted_threshold=policy.threshold).model_dump(),
                     "evidence": LiveEvidence(delta.grid).to_dict(), "index": index, "since_step": 0.0, "history": []}
        evidence = LiveEvidence.from_dict(state["evidence"])
        evidence.merge(delta)
        evidence.age(self.settings.window_items)
        state["since_step"] += delta.items
        state["evidence"] = evidence.to_dict()
        if state["since_step"] < self.update_every:
            return state
        try:
            step = control_step(evidence, state["index"], self.goal, self.teacher_budget, policy.validation, self.settings)
        except RouterError as err:  # e.g. an accuracy goal without a validated agreement: control stays off
            logger.error("live control off for %s: %s", version, err)
            return state
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        state["index"], state["since_step"] = step.index, 0.0
        state["status"].update(threshold=step.threshold, estimate=step.estimate, bound=step.bound, target=step.target,
                               held=step.held, budget_limited=step.budget_limited, evidence_items=evidence.items,
                               known_items=float(evidence.known.sum()), updated_at=now)
        state["history"] = (state["history"] + [[time.time(), step.threshold, step.estimate, step.bound, step.held]])[-HISTORY_POINTS:]
        return state

    def history(self) -> list[list[Any]]:
        """The shared history of live figures: [unix time, threshold, estimate, bound, held], oldest first."""
        state = read_json(self.path)
        return state["history"] if state else []
