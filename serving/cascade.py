"""The cascade's request logic as a plain async class: the Serve ingress wires Ray handles
into it, and tests can drive it with ordinary async functions.

For one request: (1) the student scores every text (unless mode is teacher); (2) the policy
marks unsure items, the teacher budget may turn some away (answered by the student, marked
degraded), and audit sampling adds a few confident ones; (3) those go to the teacher in one
batched call with a timeout, unless the circuit breaker is open or the teacher queue is full
(then the student answers them, degraded with that cause); (4) every item the teacher answered
or audited becomes an escalation record (its text redacted), written durably before the
response; (5) each item's answer says which tier answered, why, and what it cost. Audited
items keep the student's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence
from uuid import uuid4

import numpy as np

from distill.escalations import EscalationRecord
from router import AgreementEstimate, AuditSampler, CircuitBreaker, CostModel, EscalationPolicy, TeacherRateLimiter
from serving.api import ClassifyOptions, ClassifyResponse, LabelScore, ModelVersions, Prediction

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
Redact = Callable[[str], str]


class Cascade:
    """Routes texts between a student and a teacher and logs what the teacher answered."""

    def __init__(
        self,
        student: Predict,
        teacher: Predict,
        append_log: AppendLog,
        labels: Sequence[str],
        costs: CostModel,
        threshold: float | None = None,
        teacher_timeout_s: float = 5.0,
        budget: TeacherRateLimiter | None = None,
        auditor: AuditSampler | None = None,
        breaker: CircuitBreaker | None = None,
        teacher_max_in_flight: int | None = None,
        redact: Redact | None = None,
    ):
        self.student = student
        self.teacher = teacher
        self.append_log = append_log
        self.labels = list(labels)
        self.costs = costs
        self.threshold = threshold  # service-wide override of the fitted threshold
        self.teacher_timeout_s = teacher_timeout_s
        self.budget = budget  # caps the teacher's share of items over a sliding window
        self.auditor = auditor  # sends a fraction of confident items to the teacher too
        self.audit = AgreementEstimate()  # the student's agreement with the teacher on audited items
        self.breaker = breaker  # stops calling a teacher that keeps failing or timing out
        self.teacher_max_in_flight = teacher_max_in_flight  # the teacher queue's bound, in items
        self.teacher_in_flight = 0  # items sent to the teacher and not yet answered
        self.redact = redact  # applied to every text before it is logged
        self.degraded = Counter()  # degraded items by cause, since start
        self.log_write_errors = 0  # failed escalation log writes
        self.unlogged_records = 0  # records those failed writes did not log
        self._policies: dict[str, EscalationPolicy] = {}
        # the versions last seen, so every response names both models, even one it did not call
        self.versions = ModelVersions(student=None, teacher=None)

    def policy_for(self, output: ModelOutput) -> EscalationPolicy:
        """The student's fitted policy (parsed once per version), or the default one."""
        policy = self._policies.get(output.version)
        if policy is None:
            policy = EscalationPolicy.from_dict(output.policy) if output.policy else EscalationPolicy()
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
            output = await asyncio.wait_for(self.teacher(texts), self.teacher_timeout_s)
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

    def _route(self, student: ModelOutput | None, n: int, options: ClassifyOptions) -> tuple[np.ndarray, list[str], np.ndarray | None, np.ndarray]:
        """Which items the teacher sees, each item's reason, the student's confidence, and
        which unsure items the teacher budget turned away."""
        capped = np.zeros(n, dtype=bool)
        if options.mode == "teacher":
            return np.ones(n, dtype=bool), ["forced"] * n, None, capped
        if options.mode == "student":
            return np.zeros(n, dtype=bool), ["forced"] * n, None, capped
        policy = self.policy_for(student)
        threshold = options.threshold if options.threshold is not None else self.threshold
        confidence, unsure = policy.scores_and_mask(student.probs, threshold)
        reasons = np.where(unsure, "unsure", "confident").tolist()
        if self.budget is not None:  # every request counts toward the window, confident ones too
            admitted = self.budget.admit(int(unsure.sum()), n)
            ranked = np.flatnonzero(unsure)[np.argsort(confidence[unsure], kind="stable")]  # least confident first
            capped[ranked[admitted:]] = True
            unsure &= ~capped
        # audits are skipped while the budget turns unsure items away: they would exceed it
        auditing = self.auditor is not None and not capped.any()
        audited = ~unsure & self.auditor.sample(n) if auditing else np.zeros(n, dtype=bool)
        for i in np.flatnonzero(audited):
            reasons[i] = "audit"
        return unsure | audited, reasons, confidence, capped

    async def classify(self, texts: list[str], options: ClassifyOptions, request_id: str | None = None) -> ClassifyResponse:
        """Answer ``texts`` according to ``options`` (see the module docstring)."""
        request_id = request_id or uuid4().hex
        n = len(texts)
        student = await self.student(texts) if options.mode != "teacher" else None
        asked, reasons, confidence, capped = self._route(student, n, options)
        asked_items = np.flatnonzero(asked)
        teacher, cause = (None, None)
        if len(asked_items):
            teacher, cause = await self._ask_teacher([texts[i] for i in asked_items])
            if teacher is None and student is None:  # mode=teacher with no teacher: fall back to the student
                student = await self.student(texts)
        teacher_row = {int(item): row for row, item in enumerate(asked_items)}
        records, predictions, audit_agreement = [], [], []
        for i in range(n):
            reason = reasons[i]
            teacher_probs = teacher.probs[teacher_row[i]] if teacher is not None and i in teacher_row else None
            answered_by_teacher = teacher_probs is not None and reason != "audit"
            probs = teacher_probs if answered_by_teacher else student.probs[i]
            label_index = int(np.argmax(probs))
            if teacher_probs is not None and reason == "audit":
                audit_agreement.append(label_index == int(np.argmax(teacher_probs)))
            wanted_teacher = (i in teacher_row and reason != "audit") or capped[i]
            degraded = wanted_teacher and not answered_by_teacher
            item_cause = ("teacher_budget" if capped[i] else cause) if degraded else None
            if degraded:
                self.degraded[item_cause] += 1
            cost = (self.costs.student_units if student is not None else 0.0) + (
                self.costs.teacher_units if teacher_probs is not None else 0.0
            )
            predictions.append(
                Prediction(
                    label=self.labels[label_index],
                    score=round(float(probs[label_index]), 6),
                    tier="teacher" if answered_by_teacher else "student",
                    escalated=i in teacher_row and reason != "audit",
                    degraded=degraded,
                    cause=item_cause,
                    reason=reason,
                    confidence=round(float(confidence[i]), 6) if confidence is not None else None,
                    cost=cost,
                    top_k=self._top_k(probs, options.top_k),
                )
            )
            if teacher_probs is not None:
                records.append(self._record(request_id, texts[i], reason, student, i, teacher, teacher_row[i]))
        if audit_agreement:
            self.audit.update(np.array(audit_agreement))
        logged = await self._log(records)
        self.versions = ModelVersions(
            student=student.version if student else self.versions.student,
            teacher=teacher.version if teacher else self.versions.teacher,
        )
        return ClassifyResponse(
            request_id=request_id,
            predictions=predictions,
            versions=self.versions,
            logged=logged,
            cost=sum(p.cost for p in predictions),
        )

    def _top_k(self, probs: np.ndarray, k: int) -> list[LabelScore] | None:
        if k <= 0:
            return None
        order = np.argsort(-probs, kind="stable")[:k]
        return [LabelScore(label=self.labels[j], score=round(float(probs[j]), 6)) for j in order]

    def _record(
        self, request_id: str, text: str, reason: str, student: ModelOutput | None, i: int, teacher: ModelOutput, row: int
    ) -> EscalationRecord:
        return EscalationRecord(
            request_id=request_id,
            text=self.redact(text) if self.redact else text,
            reason=reason,
            student_label=self.labels[int(np.argmax(student.probs[i]))] if student else None,
            teacher_label=self.labels[int(np.argmax(teacher.probs[row]))],
            student_probs=student.probs[i].tolist() if student else None,
            teacher_probs=teacher.probs[row].tolist(),
            student_version=student.version if student else None,
            teacher_version=teacher.version,
            teacher_label_only=teacher.label_only,  # refresh then trains on it as a label
        )

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
        }
