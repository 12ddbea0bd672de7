"""Shadow candidates on live traffic. While the registry holds a student in shadow
(``Registry.start_shadow``: by ``cascade refresh --shadow`` or ``POST /v1/admin/shadow``), each
ingress replica loads it beside the serving student, scores every cascade request with it
(its answers are never returned) and keeps paired evidence (``router.shadow``). Once a second
a replica merges its evidence into the shared ``shadow`` document (``serving.stores``); the
replica whose merge makes the verdict promote or reject ends the shadow in the registry, which
records the verdict and its evidence in ``history.jsonl`` (and promotes: model servers swap as
for any promotion). A failure of the candidate never fails a request: it only stops the shadow
in that replica, loudly."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from distill.backends import HFClassifier
from distill.metadata import escalation_policy
from distill.registry import Registry
from router import EscalationPolicy
from router.controller import LiveEvidence, threshold_grid
from router.shadow import ShadowEvidence, ShadowSettings, shadow_verdict
from serving.cascade import Evidence
from serving.shared_state import SharedRouting
from serving.stores import SHADOW_DOCUMENT, SYNC_EVERY_S, StateStore

logger = logging.getLogger("cascade")


class ShadowRun:
    """One ingress replica's side of a shadow candidate (see the module docstring)."""

    def __init__(self, registry: Registry, state: StateStore, settings: ShadowSettings = ShadowSettings(),
                 check_every_s: float = SYNC_EVERY_S, load: Callable[[str], Any] = HFClassifier.load):
        self.registry = registry
        self.state = state
        self.settings = settings
        self.check_every_s = check_every_s
        self.load = load
        self.candidate: Any = None  # the loaded candidate model, while a shadow runs
        self.version: str | None = None
        self.policy: EscalationPolicy | None = None
        self.status: dict[str, Any] | None = None  # the last merged evidence and verdict, for /v1/models
        self._delta = ShadowEvidence()
        self._live: LiveEvidence | None = None  # this replica's new evidence on the candidate's own confidence bins
        self._checked_at = float("-inf")
        self._busy = False

    def observe(self, evidence: Evidence) -> None:
        """Score the candidate on one cascade request beside the serving student."""
        candidate, policy = self.candidate, self.policy
        if candidate is None:
            return
        try:
            probs = candidate.predict_proba(evidence.texts)
            if probs.shape != evidence.student.probs.shape:
                raise ValueError(f"candidate answered shape {probs.shape}, the student {evidence.student.probs.shape}")
            confidence, escalates = policy.scores_and_mask(probs)
            self._delta.add(
                evidence.student.probs.argmax(axis=1), probs.argmax(axis=1), evidence.teacher_label, evidence.known,
                evidence.policy.escalate_mask(evidence.student.probs), escalates,
            )
            if self._live is None:
                self._live = LiveEvidence(threshold_grid(policy.measure, probs.shape[1]))
            # which items are known depends on the serving student, not on the candidate: each weighs 1 / its chance
            self._live.add(confidence, evidence.known, probs.argmax(axis=1) == evidence.teacher_label, evidence.known_probability)
        except Exception as err:  # the candidate never fails a request
            logger.error("shadow %s failed on live traffic and is dropped in this replica: %r", self.version, err)
            self.candidate = None

    async def tick(self, current_version: str | None) -> None:
        """Follow the registry's shadow pointer and merge evidence, once per ``check_every_s``."""
        if self._busy or time.monotonic() - self._checked_at < self.check_every_s:
            return
        self._busy = True
        try:
            await asyncio.to_thread(self.sync, current_version)
        except Exception as err:
            logger.error("shadow: cannot sync: %r", err)
        finally:
            self._checked_at = time.monotonic()
            self._busy = False

    def sync(self, current_version: str | None) -> None:
        """Load or drop the candidate as the pointer says; merge evidence and act on the verdict."""
        shadow = self.registry.shadow("student")
        if shadow is None or shadow["current"] != current_version:
            if self.candidate is not None:
                logger.info("shadow %s ended", self.version)
            self.candidate, self.version, self.policy, self.status = None, None, None, None
            self._delta, self._live = ShadowEvidence(), None
            return
        if shadow["version"] != self.version:
            model = self.load(str(self.registry.path("student", shadow["version"])))
            model.predict_proba(["warm up"])
            self._delta, self._live = ShadowEvidence(), None
            self.candidate, self.version, self.policy = model, shadow["version"], escalation_policy(model.meta)
            logger.info("shadow %s now scored beside %s", self.version, current_version)
            return
        delta, self._delta = self._delta, ShadowEvidence()
        live, self._live = self._live, None

        def merged(state: dict | None) -> dict:
            if state is None or state.get("version") != self.version:
                state = {"version": self.version, "current": current_version, "evidence": ShadowEvidence().to_dict()}
            evidence = ShadowEvidence.from_dict(state["evidence"])
            evidence.merge(delta)
            verdict = shadow_verdict(evidence, self.settings)
            # the candidate's own evidence, which live control starts it from if it is promoted (serving.live)
            kept = LiveEvidence.from_dict(state["live"]) if state.get("live") else live
            if kept is not None and live is not None and kept is not live:
                kept.merge(live)
            return {**state, "evidence": evidence.to_dict(), "live": kept.to_dict() if kept is not None else None,
                    "verdict": {"decision": verdict.decision, "reason": verdict.reason,
                                "agreement_gain": verdict.agreement_gain, "escalation_change": verdict.escalation_change}}

        state = self.state.update(SHADOW_DOCUMENT, merged)
        self.status, verdict = state, state["verdict"]
        if verdict["decision"] != "wait":
            record = {**state["evidence"], "agreement_gain": list(verdict["agreement_gain"]),
                      "escalation_change": list(verdict["escalation_change"])}
            promote = verdict["decision"] == "promote"
            if self.registry.end_shadow("student", self.version, promote, record, verdict["reason"]):
                logger.info("shadow %s %s: %s", self.version, "promoted" if promote else "rejected", verdict["reason"])
                if promote:  # every model server swaps now, as on an admin reload, whatever its poll_registry_s
                    SharedRouting(self.state).bump_reload()


def candidate_figures(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shadow's evidence and verdict as ``/v1/models`` reports them."""
    if status is None:
        return None
    e = status["evidence"]
    known = max(e["known"], 1.0)
    items = max(e["items"], 1.0)
    return {"version": status["version"], "items": e["items"], "known": e["known"],
            "current_agreement": e["current_agreed"] / known, "candidate_agreement": e["candidate_agreed"] / known,
            "current_escalation": e["current_escalated"] / items, "candidate_escalation": e["candidate_escalated"] / items,
            "verdict": status["verdict"]["decision"], "reason": status["verdict"]["reason"]}

