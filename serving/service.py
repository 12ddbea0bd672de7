"""The cascade service without Ray: readiness, input checks, classify, models, stats and admin,
over two model clients (anything with async ``predict``, ``info`` and ``reload``). The Serve
ingress hands it Ray handles; tests hand it plain async fakes. Failures are ``ServingError``s
``serving.errors``, carrying their HTTP status; only ``serving.http`` turns them into responses."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from distill.errors import RegistryError
from distill.feedback import FeedbackRecord
from distill.metadata import escalation_policy
from distill.registry import Registry
from router.policy import threshold_in_force
from router import AuditSampler, CircuitBreaker, EscalationPolicy, RouterError, TeacherRateLimiter
from serving import admin
from serving.api import ClassifyOptions, ClassifyResponse, ModelsResponse, ModelVersions
from serving.cascade import Cascade, Evidence, ModelOutput, Redact
from serving.config import CascadeConfig
from serving.errors import Conflict, InvalidInput, TooLarge, Unavailable
from serving.feedback import FeedbackDesk, FeedbackItem, FeedbackResponse
from serving.guards import InFlightLimit
from serving.live import LiveControl
from serving.shadow import ShadowRun, candidate_figures
from serving.shared_state import SharedRouting
from serving.stores import SYNC_EVERY_S, Stores

logger = logging.getLogger("cascade")


class ModelClient(Protocol):
    """A model deployment as the service sees it."""

    async def predict(self, texts: list[str]) -> ModelOutput: ...

    async def info(self) -> dict[str, Any]: ...

    async def reload(self) -> str: ...


class Metrics(Protocol):
    """What the service reports per request (``serving.metrics.IngressMetrics``)."""

    def record_response(self, response: ClassifyResponse, mode: str, seconds: float) -> None: ...

    def record_audits(self, audited: int, agreed: int) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None: ...


class CascadeService:
    """One ingress replica's cascade: built once, ready once the student answers (the teacher
    may be down: its items degrade), with routing overrides shared by every replica."""

    def __init__(
        self,
        config: CascadeConfig,
        student: ModelClient,
        teacher: ModelClient,
        stores: Stores,
        metrics: Metrics | None = None,
        in_flight: InFlightLimit | None = None,
        redact: Redact | None = None,
        shared_check_every_s: float = SYNC_EVERY_S,
    ):
        self.config = config
        self.student, self.teacher = student, teacher
        self.stores = stores
        self.metrics = metrics
        self.in_flight = in_flight
        self.redact = redact
        self.shared = SharedRouting(stores.state, shared_check_every_s)
        routing = config.routing
        self.shadow = ShadowRun(stores.registry, stores.state)
        self.live = (
            LiveControl(stores.registry, stores.state, routing.goal, routing.teacher_budget, routing.threshold,
                        on_status=getattr(metrics, "record_live", None), outcomes=stores.feedback.outcomes,
                        audit_rate=routing.audit_rate)
            if routing.control and routing.audit_rate > 0
            else None
        )
        self.desk = FeedbackDesk(stores.traffic_lookup, stores.feedback, stores.feedback_log.append, config.feedback.max_items,
                                 on_recorded=self._count_feedback, keeping=stores.traffic is not None)
        self.cascade: Cascade | None = None
        self._lock = asyncio.Lock()

    def close(self) -> None:
        """Finish the stores' pending writes and close them; call it once nothing is served any more."""
        self.stores.close()

    # ---- readiness

    async def ready(self) -> Cascade:
        """The cascade, built once the student answers ``info``. The teacher is not needed: a
        teacher that is down degrades its items to the student's answers."""
        if self.cascade is not None:
            return self.cascade
        async with self._lock:
            if self.cascade is None:
                student = await self.student.info()
                routing = self.config.routing
                cascade = Cascade(
                    student=self._timed(self.student.predict, "student"),
                    teacher=self._timed(self.teacher.predict, "teacher"),
                    append_log=self.stores.escalations.append,
                    labels=student["labels"],
                    costs=routing.costs(),
                    teacher_timeout_s=routing.teacher_timeout_s,
                    budget=TeacherRateLimiter(routing.teacher_budget, routing.budget_window_s) if routing.teacher_budget < 1 else None,
                    auditor=AuditSampler(routing.audit_rate, allocation=self._audit_allocation) if routing.audit_rate > 0 else None,
                    breaker=CircuitBreaker(routing.breaker_failures, routing.breaker_reset_s),
                    teacher_max_in_flight=routing.teacher_max_in_flight,
                    redact=self.redact,
                    threshold_for=self._threshold_for,
                    on_evidence=self._observe,
                    **({"keep_traffic": traffic.append, "new_request_id": traffic.new_request_id} if (traffic := self.stores.traffic) else {}),
                )
                cascade.versions = ModelVersions(student=student["version"], teacher=None)
                if self.live is not None:  # a restarted or added replica starts from the shared live threshold
                    await asyncio.to_thread(self.live.sync)
                self.shared.read(fresh=True)  # a restarted or added replica starts from the admin's threshold too
                self.cascade = cascade
                # every answer names the teacher's version, even before the teacher first answers
                self._teacher_task = asyncio.get_running_loop().create_task(self._learn_teacher_version(cascade))
        return self.cascade

    async def _learn_teacher_version(self, cascade: Cascade) -> None:
        """Ask the teacher its version once, in the background: a teacher that is down does not
        hold readiness up (its items degrade), and its version is learnt at its first answer."""
        self._know_teacher(cascade, await self._teacher_info())

    @staticmethod
    def _know_teacher(cascade: Cascade, teacher: dict[str, Any] | None) -> None:
        if teacher is not None and cascade.versions.teacher is None:
            cascade.versions = ModelVersions(student=cascade.versions.student, teacher=teacher["version"])

    def _audit_allocation(self, confidence: np.ndarray) -> np.ndarray | None:
        """Audit probabilities by confidence, as online control allocates them (None: uniform)."""
        return self.live.audit_probabilities(self.live.status.student, confidence) if self.live is not None else None

    def _observe(self, evidence: Evidence) -> None:
        """What a cascade request showed goes to online control and to a shadow candidate."""
        if self.live is not None:
            self.live.observe(evidence)
        self.shadow.observe(evidence)

    def _count(self, name: str, **labels: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, **labels)

    def _count_feedback(self, record: FeedbackRecord) -> None:
        self._count("cascade_feedback_items_total", tier=record.tier, outcome="correct" if record.correct else "wrong")

    def _timed(self, predict: Callable[[list[str]], Awaitable[ModelOutput]], tier: str) -> Callable[[list[str]], Awaitable[ModelOutput]]:
        """``predict`` that reports its latency as the tier's."""

        async def timed(texts: list[str]) -> ModelOutput:
            start = time.perf_counter()
            output = await predict(texts)
            if self.metrics is not None:
                self.metrics.observe("cascade_tier_latency_seconds", time.perf_counter() - start, tier=tier)
            return output

        return timed

    async def readiness(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Both models loaded and answering, else ``Unavailable`` naming what is not."""
        try:
            cascade = await asyncio.wait_for(self.ready(), timeout_s)
            teacher = await asyncio.wait_for(self.teacher.info(), timeout_s)
        except Exception as err:
            raise Unavailable(f"not ready: {type(err).__name__}: {err}") from err
        self._know_teacher(cascade, teacher)
        return {"status": "ready", "labels": len(cascade.labels)}

    # ---- classify

    def check_texts(self, texts: list[str]) -> None:
        """Refuse what the limits or the models cannot take, naming the item and the problem."""
        limits = self.config.limits
        if not texts:
            raise InvalidInput("inputs: expected a text or a non-empty list of texts")
        if len(texts) > limits.max_items:
            raise TooLarge(f"inputs: {len(texts)} texts, at most {limits.max_items} per request")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"inputs[{i}]: empty or whitespace-only text")
            if len(text) > limits.max_text_chars:
                raise TooLarge(f"inputs[{i}]: {len(text)} characters, at most {limits.max_text_chars}")
            try:
                text.encode("utf-8")  # a JSON escape such as \ud800 can smuggle in a lone surrogate
            except UnicodeEncodeError as err:
                raise InvalidInput(f"inputs[{i}]: not valid Unicode at character {err.start} (a lone surrogate)") from None

    async def classify(self, texts: list[str], options: ClassifyOptions, privileged: bool = False) -> ClassifyResponse:
        """Check ``texts``, run the cascade, record the request's metrics (one path for /v1 and /v2)."""
        self.check_texts(texts)
        cascade = await self.ready()
        start = time.perf_counter()
        try:
            answer = await cascade.classify(texts, options, privileged=privileged)
        except RouterError as err:  # a threshold override the student's measure cannot take
            raise InvalidInput(f"options: {err}") from None
        if self.metrics is not None:
            self.metrics.record_response(answer, options.mode, time.perf_counter() - start)
            self.metrics.record_audits(cascade.audit.audited, cascade.audit.agreed)
        if self.live is not None:
            await self.live.tick()
        await self.shadow.tick(cascade.versions.student)
        return answer

    def _threshold_for(self, output: ModelOutput, policy: EscalationPolicy) -> float | None:
        """The threshold a student's answer is routed with (``_threshold_and_source``)."""
        return self._threshold_and_source(output.version, policy, output.probs.shape[1])[0]

    def _threshold_and_source(self, version: str | None, policy: EscalationPolicy, classes: int,
                              fresh: bool = False) -> tuple[float | None, str]:
        """The threshold every replica routes ``version``'s answers with, and where it comes from:
        the admin's, else online control's (``serving.live``), else the config's, else None (the
        student's fitted one)."""
        live = self.live.threshold(version, policy, classes) if self.live is not None else None
        return threshold_in_force(self.shared.read(fresh).threshold, live, self.config.routing.threshold)

    # ---- models and stats

    async def models(self) -> ModelsResponse:
        """Labels, versions and the policy in force, with the threshold every replica uses."""
        cascade = await self.ready()
        student, teacher = await asyncio.gather(self.student.info(), self._teacher_info())
        policy = escalation_policy(student["policy"])
        override, source = self._threshold_and_source(student["version"], policy, len(cascade.labels), fresh=True)
        return ModelsResponse(
            labels=cascade.labels,
            versions=ModelVersions(student=student["version"], teacher=teacher["version"] if teacher else cascade.versions.teacher),
            threshold=override if override is not None else policy.threshold,
            threshold_source=source,
            fitted_threshold=policy.threshold,
            live=self.live.status if self.live is not None and self.live.status.student == student["version"] else None,
            shadow=candidate_figures(self.shadow.status),
            temperature=policy.temperature,
            measure=policy.measure,
            goal=policy.goal,
        )

    async def _teacher_info(self) -> dict[str, Any] | None:
        """The teacher's info, or None when it does not answer (models stay reportable)."""
        try:
            return await asyncio.wait_for(self.teacher.info(), self.config.routing.teacher_timeout_s)
        except Exception as err:
            logger.warning("teacher info unavailable: %r", err)
            return None

    async def stats(self) -> dict[str, Any]:
        """Audit agreement so far (the unbiased estimate of the student's agreement with the
        teacher on what it answers alone), live accuracy by tier from every replica's feedback,
        and this replica's fault counters."""
        cascade = await self.ready()
        low, high = cascade.audit.interval()
        reliability = cascade.reliability_stats()
        if self.in_flight is not None:
            reliability = {"shed_requests": self.in_flight.shed, "in_flight": self.in_flight.in_flight, **reliability}
        await asyncio.to_thread(self.stores.feedback.sync)
        return {
            "audit": {"audited": cascade.audit.audited, "agreed": cascade.audit.agreed,
                      "agreement": cascade.audit.value, "interval_95": [round(low, 4), round(high, 4)]},
            "feedback": self.stores.feedback.figures(),
            "reliability": reliability,
        }

    # ---- feedback (the token is checked at the edge)

    async def feedback(self, items: list[FeedbackItem]) -> FeedbackResponse:
        """Record the true labels of answered items (``serving.feedback``)."""
        cascade = await self.ready()
        return await self.desk.record(items, cascade.labels)

    # ---- admin (the token is checked at the edge)

    async def set_threshold(self, threshold: float | None) -> admin.ThresholdResponse:
        """Set the threshold of every ingress replica (None: back to the configured, else the
        fitted one); checked against the student's confidence measure; survives restarts."""
        cascade = await self.ready()
        student = await self.student.info()
        policy = escalation_policy(student["policy"])
        if threshold is not None:
            try:
                dataclasses.replace(policy, threshold=threshold)
            except RouterError as err:
                raise InvalidInput(f"threshold: {err}") from None
        previous = self._threshold_and_source(student["version"], policy, len(cascade.labels), fresh=True)[0]
        await asyncio.to_thread(self.shared.write, threshold=threshold)
        self.shared.read(fresh=True)  # this replica routes with it at once, the others within a check
        return admin.ThresholdResponse(threshold=threshold, previous=previous)

    async def set_shadow(self, version: str | None) -> dict[str, Any]:
        """Start judging a registered student in shadow on live traffic (None: stop the one running)."""
        registry = self.stores.registry
        try:
            if version is not None:
                return {"shadow": await asyncio.to_thread(registry.start_shadow, "student", version, "admin api")}
            running = registry.shadow("student")
            if running is not None:
                await asyncio.to_thread(registry.end_shadow, "student", running["version"], False, None, "stopped by admin")
            return {"shadow": None, "stopped": running["version"] if running else None}
        except RegistryError as err:
            raise Conflict(str(err)) from None

    async def move_pointer(self, move: Callable[[Registry, Any], admin.PointerResponse], body: Any) -> admin.PointerResponse:
        """Promote or roll back in the registry (``serving.admin``); a refused move is a 409."""
        try:
            return await asyncio.to_thread(move, self.stores.registry, body)
        except RegistryError as err:
            raise Conflict(str(err)) from None

    async def reload(self) -> admin.ReloadResponse:
        """Make the model servers re-read the registry's current pointers now: the replicas this
        call reaches at once, every other one within ``SYNC_EVERY_S`` (through the shared state)."""
        await asyncio.to_thread(self.shared.bump_reload)
        try:
            student, teacher = await asyncio.gather(self.student.reload(), self.teacher.reload())
        except Exception as err:  # a version that cannot load: the serving one stays
            raise Conflict(f"reload failed, serving versions kept: {err}") from None
        return admin.ReloadResponse(student=student, teacher=teacher)
