"""The cascade's request logic as a plain async class: the service wires model clients into
it, and tests can drive it with ordinary async functions.

For one request: (1) the student scores every text (unless mode is teacher); (2)
``router.route`` decides which items the teacher is asked about (unsure or forced items the
budget admits, and audited confident ones); (3) those go to the teacher in one batched call with
a timeout, unless the circuit breaker is open or the teacher queue is full; (4)
``router.settle`` gives each item its tier, reason, escalated/consulted/degraded flags, cause
and cost; (5) every item the teacher was consulted on becomes an escalation record (its text
redacted), written durably before the response; (6) the whole request (every item's text and
labels) goes to the traffic log, durably too, so that feedback can name any item later.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import numpy as np

from distill.escalations import EscalationRecord
from distill.metadata import escalation_policy
from router import AgreementEstimate, AuditSampler, CircuitBreaker, CostModel, Decision, EscalationPolicy, Route, TeacherRateLimiter, route, settle
from serving.api import ClassifyOptions, ClassifyResponse, LabelScore, ModelVersions, Prediction
from serving.traffic import KeptItem, KeptRequest

logger = logging.getLogger("cascade")


@dataclass(frozen=True)
class ModelOutput:
    """What a model deployment returns for a list of texts."""

    probs: np.ndarray
    version: str
    policy: dict | None = None  # the student's fitted escalation policy
    label_only: bool = False  # rows are a black-box teacher's one-hot labels, not probabilities


Predict = Callable[[list[str]], Awaitable[ModelOutput]]
AppendLog = Callable[[list[EscalationRecord]], Awaitable[int]]
KeepTraffic = Callable[[list[KeptRequest]], Awaitable[int]]
Redact = Callable[[str], str]
# the threshold a student's answer is routed with (admin, online control or config), None: its policy's
ThresholdFor = Callable[[ModelOutput, EscalationPolicy], float | None]


def no_override(output: ModelOutput, policy: EscalationPolicy) -> None:
    """Every student answer routed at its own policy's threshold."""
    return None


@dataclass(frozen=True)
class Evidence:
    """What one cascade request shows of the student against the teacher, for online control
    and shadow candidates: per item, the teacher's label where it is known (else -1)."""

    texts: list[str]
    student: ModelOutput
    policy: EscalationPolicy  # the student's fitted policy
    plan: Route
    teacher_label: np.ndarray

    @property
    def known(self) -> np.ndarray:
        return self.teacher_label >= 0

    @property
    def agreed(self) -> np.ndarray:
        return self.student.probs.argmax(axis=1) == self.teacher_label

    @property
    def known_probability(self) -> np.ndarray:
        """Each item's chance of having its teacher label seen (``router.decision.Route.known_probability``)."""
        return self.plan.known_probability


OnEvidence = Callable[[Evidence], None]


class Cascade:
    """Routes texts between a student and a teacher and logs what the teacher answered."""

    def __init__(
        self,
        student: Predict,
        teacher: Predict,
        append_log: AppendLog,
        labels: Sequence[str],
        costs: CostModel,
        threshold_for: ThresholdFor = no_override,
        teacher_timeout_s: float = 5.0,
        budget: TeacherRateLimiter | None = None,
        auditor: AuditSampler | None = None,
        breaker: CircuitBreaker | None = None,
        teacher_max_in_flight: int | None = None,
        redact: Redact | None = None,
        on_evidence: OnEvidence | None = None,
        keep_traffic: KeepTraffic | None = None,
        new_request_id: Callable[[], str] = lambda: os.urandom(16).hex(),
    ):
        self.student = student
        self.teacher = teacher
        self.append_log = append_log
        self.labels = list(labels)
        self.costs = costs
        self.threshold_for = threshold_for  # the service-wide threshold for the student that answered
        self.teacher_timeout_s = teacher_timeout_s
        self.budget = budget  # caps the teacher's share of items over a sliding window
        self.auditor = auditor  # sends a fraction of confident items to the teacher too
        self.audit = AgreementEstimate()  # the student's agreement with the teacher on audited items
        self.breaker = breaker  # stops calling a teacher that keeps failing or timing out
        self.teacher_max_in_flight = teacher_max_in_flight  # the teacher queue's bound, in items
        self.teacher_in_flight = 0  # items sent to the teacher and not yet answered
        self.redact = redact  # applied to every text before it is logged
        self.on_evidence = on_evidence  # told what each cascade request shows of student-teacher agreement
        self.keep_traffic = keep_traffic  # writes each answered request to the traffic log, durably
        self.new_request_id = new_request_id  # ids the traffic log can find requests by
        self.degraded = Counter()  # degraded items by cause, since start
        self.log_write_errors = 0  # failed escalation log writes
        self.unlogged_records = 0  # records those failed writes did not log
        self.traffic_write_errors = 0  # failed traffic log writes (their requests cannot get feedback)
        self._policies: dict[str, EscalationPolicy] = {}
        # the versions last seen, so every response names both models, even one it did not call
        self.versions = ModelVersions(student=None, teacher=None)

    def policy_for(self, output: ModelOutput) -> EscalationPolicy:
        """The student's fitted policy (parsed once per version), or the default one."""
        policy = self._policies.get(output.version)
        if policy is None:
            policy = escalation_policy(output.policy)
            self._policies[output.version] = policy
        return policy

    async def _ask_teacher(self, texts: list[str]) -> tuple[ModelOutput | None, str | None]:
        """The teacher's output, or None and the cause: the teacher queue is full, the breaker
        is open, or the call timed out or failed (which the breaker counts)."""
        cap = self.teacher_max_in_flight
        if cap is not None and self.teacher_in_flight > 0 and self.teacher_in_flight + len(texts) > cap:
            return None, "teacher_overloaded"  # a request larger than the cap still goes alone
        if self.breaker is not None and not self.breaker.allow():  # asked last: a half-open probe must run
            return None, "teacher_circuit_open"
        output, cause = None, None
        self.teacher_in_flight += len(texts)
        try:
            answer = await asyncio.wait_for(self.teacher(texts), self.teacher_timeout_s)
            if answer.probs.shape != (len(texts), len(self.labels)):  # a teacher with another label list
                raise ValueError(f"teacher answered shape {answer.probs.shape} for {len(texts)} texts and {len(self.labels)} labels")
            output = answer
        except asyncio.TimeoutError:
            cause = "teacher_timeout"
        except Exception as err:  # any failure of the teacher degrades to the student's answer
            logger.warning("teacher call failed: %r", err)
            cause = "teacher_unavailable"
        finally:
            self.teacher_in_flight -= len(texts)
        if self.breaker is not None and cause:
            self.breaker.record_failure()
        elif self.breaker is not None:
            self.breaker.record_success()
        return output, cause

    async def classify(
        self, texts: list[str], options: ClassifyOptions, request_id: str | None = None, privileged: bool = False
    ) -> ClassifyResponse:
        """Answer ``texts`` according to ``options`` (see the module docstring); a ``privileged``
        (admin) request's forced teacher items are not capped by the budget."""
        received = time.time()  # the time kept with the request: never after the time in its id, which purging cuts by
        request_id = request_id or self.new_request_id()
        n = len(texts)
        student = await self.student(texts) if options.mode != "teacher" else None
        policy = self.policy_for(student) if student else None
        threshold = options.threshold
        if threshold is None and options.mode == "cascade":
            threshold = self.threshold_for(student, policy)
        plan = route(options.mode, n, student.probs if student else None, policy, threshold, self.budget, self.auditor, privileged)
        asked = np.flatnonzero(plan.ask)
        teacher, cause = (None, None)
        if len(asked):
            teacher, cause = await self._ask_teacher([texts[i] for i in asked])
        decisions = settle(plan, teacher is not None, cause, self.costs)
        if student is None and decisions.student_scored.any():  # mode teacher: the student answers what the teacher did not
            student = await self._student_for(texts, decisions.student_scored)
        teacher_row = dict(zip(asked.tolist(), range(len(asked)))) if teacher is not None else {}
        # each item's label from each model, once: -1 where that model did not score it (or was not consulted)
        student_label = np.where(decisions.student_scored, student.probs.argmax(axis=1), -1) if student is not None else np.full(n, -1)
        teacher_label = np.full(n, -1)
        if teacher is not None:
            consulted = np.flatnonzero(decisions.consulted)
            teacher_label[consulted] = teacher.probs.argmax(axis=1)[[teacher_row[i] for i in consulted]]
        records, predictions, kept = [], [], []
        student_labels, teacher_labels = student_label.tolist(), teacher_label.tolist()  # plain ints per item
        for i, decision in enumerate(decisions):
            by_teacher = decision.tier == "teacher"
            probs = teacher.probs[teacher_row[i]] if by_teacher else student.probs[i]
            if decision.degraded:
                self.degraded[decision.cause] += 1
            prediction = self._prediction(decision, probs, teacher_labels[i] if by_teacher else student_labels[i], options.top_k)
            predictions.append(prediction)
            if decision.consulted:
                scored = student if decision.student_scored else None
                records.append(EscalationRecord.consulted(
                    self.labels, self.redact(texts[i]) if self.redact else texts[i], decision.reason,
                    scored.probs[i] if scored else None, teacher.probs[teacher_row[i]], scored.version if scored else None,
                    teacher.version, request_id=request_id, teacher_label_only=teacher.label_only))  # label-only: refresh trains on the label
            if self.keep_traffic is not None:  # every label it got, and the confidence live control bins outcomes by
                kept.append(KeptItem(self.redact(texts[i]) if self.redact else texts[i], decision.tier, prediction.label,
                                     self.labels[student_labels[i]] if student_labels[i] >= 0 else None,
                                     self.labels[teacher_labels[i]] if teacher_labels[i] >= 0 else None, decision.confidence))
        if plan.mode == "cascade":
            evidence = Evidence(texts, student, self.policy_for(student), plan, teacher_label)
            audited = plan.audited & evidence.known
            if audited.any():
                self.audit.update(evidence.agreed[audited])
            if self.on_evidence is not None:
                self.on_evidence(evidence)
        if options.evaluation:  # evaluation traffic is answered, never logged for distillation
            records = []
        self.versions = ModelVersions(
            student=student.version if student else self.versions.student,
            teacher=teacher.version if teacher else self.versions.teacher,
        )
        request = KeptRequest(request_id, received, options.evaluation, self.versions.student, self.versions.teacher, kept) if kept else None
        logged = await self._write(records, request)
        return ClassifyResponse.model_construct(  # every field is built valid here: no second validation
            request_id=request_id,
            predictions=predictions,
            versions=self.versions,
            logged=logged,
            cost=float(decisions.cost.sum()),
        )

    async def _student_for(self, texts: list[str], needed: np.ndarray) -> ModelOutput:
        """The student's output for the ``needed`` items only, scattered into rows for all of ``texts``."""
        items = np.flatnonzero(needed)
        output = await self.student([texts[i] for i in items])
        probs = np.zeros((len(texts), output.probs.shape[1]), dtype=output.probs.dtype)
        probs[items] = output.probs
        return ModelOutput(probs, output.version, output.policy, output.label_only)

    def _prediction(self, decision: Decision, probs: np.ndarray, label_index: int, top_k: int) -> Prediction:
        return Prediction.model_construct(
            label=self.labels[label_index],
            score=round(float(probs[label_index]), 6),
            tier=decision.tier,
            escalated=decision.escalated,
            consulted=decision.consulted,
            degraded=decision.degraded,
            cause=decision.cause,
            reason=decision.reason,
            confidence=round(decision.confidence, 6) if decision.confidence is not None else None,
            cost=decision.cost,
            top_k=self._top_k(probs, top_k),
        )

    def _top_k(self, probs: np.ndarray, k: int) -> list[LabelScore] | None:
        if k <= 0:
            return None
        order = np.argsort(-probs, kind="stable")[:k]
        return [LabelScore(label=self.labels[j], score=round(float(probs[j]), 6)) for j in order]

    async def _write(self, records: list[EscalationRecord], request: KeptRequest | None) -> int:
        """Log the records and keep the request, the two durable writes in parallel; returns the
        records logged."""
        if request is None:
            return await self._log(records)
        if not records:
            await self._keep(request)
            return 0
        logged, _ = await asyncio.gather(self._log(records), self._keep(request))
        return logged

    async def _keep(self, request: KeptRequest) -> None:
        """Keep the request in the traffic log; a failed write is logged loudly but never fails
        the request (feedback on it will answer 404)."""
        try:
            await self.keep_traffic([request])
        except Exception as err:
            self.traffic_write_errors += 1
            logger.error("traffic log write failed; request %s cannot get feedback: %r", request.request_id, err)

    async def _log(self, records: list[EscalationRecord]) -> int:
        """Write records durably; a failed write is logged loudly but never fails the request."""
        if not records:
            return 0
        try:
            return await self.append_log(records)
        except Exception as err:
            self.log_write_errors += 1
            self.unlogged_records += len(records)
            logger.error("escalation log write failed; %d record(s) not logged: %r", len(records), err)
            return 0

    def reliability_stats(self) -> dict:
        """Plain counters of this replica's faults since start, for ``/v1/stats``."""
        return {
            "degraded": dict(self.degraded),
            "breaker": self.breaker.state if self.breaker else None,
            "teacher_in_flight": self.teacher_in_flight,
            "log_write_errors": self.log_write_errors,
            "unlogged_records": self.unlogged_records,
            "traffic_write_errors": self.traffic_write_errors,
        }
