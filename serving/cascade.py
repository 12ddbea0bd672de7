"""The cascade's request logic as a plain async class: the Serve ingress wires Ray handles
into it, and tests can drive it with ordinary async functions.

For one request: (1) the student scores every text (unless mode is teacher); (2) the policy
marks unsure items; (3) only those go to the teacher, in one batched call with a timeout;
(4) each escalated item becomes an escalation record, written durably before the response;
(5) each item's answer says which tier answered, why, and what it cost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence
from uuid import uuid4

import numpy as np

from distill.escalations import EscalationRecord
from router import CostModel, EscalationPolicy
from serving.api import ClassifyOptions, ClassifyResponse, LabelScore, ModelVersions, Prediction

logger = logging.getLogger("cascade")


@dataclass(frozen=True)
class ModelOutput:
    """What a model deployment returns for a list of texts."""

    probs: np.ndarray
    version: str
    policy: dict | None = None  # the student's fitted escalation policy


Predict = Callable[[list[str]], Awaitable[ModelOutput]]
AppendLog = Callable[[list[EscalationRecord]], Awaitable[int]]


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
    ):
        self.student = student
        self.teacher = teacher
        self.append_log = append_log
        self.labels = list(labels)
        self.costs = costs
        self.threshold = threshold  # service-wide override of the fitted threshold
        self.teacher_timeout_s = teacher_timeout_s
        self._policies: dict[str, EscalationPolicy] = {}

    def policy_for(self, output: ModelOutput) -> EscalationPolicy:
        """The student's fitted policy (parsed once per version), or the default one."""
        policy = self._policies.get(output.version)
        if policy is None:
            policy = EscalationPolicy.from_dict(output.policy) if output.policy else EscalationPolicy()
            self._policies[output.version] = policy
        return policy

    async def _ask_teacher(self, texts: list[str]) -> tuple[ModelOutput | None, str | None]:
        """The teacher's output, or None and the cause when it timed out or failed."""
        try:
            return await asyncio.wait_for(self.teacher(texts), self.teacher_timeout_s), None
        except asyncio.TimeoutError:
            return None, "teacher_timeout"
        except Exception as err:  # any failure of the teacher degrades to the student's answer
            logger.warning("teacher call failed: %r", err)
            return None, "teacher_unavailable"

    async def classify(self, texts: list[str], options: ClassifyOptions, request_id: str | None = None) -> ClassifyResponse:
        """Answer ``texts`` according to ``options`` (see the module docstring)."""
        request_id = request_id or uuid4().hex
        n = len(texts)
        student = await self.student(texts) if options.mode != "teacher" else None
        confidence = None
        if options.mode == "teacher":
            escalate, reason = np.ones(n, dtype=bool), "forced"
        elif options.mode == "student":
            escalate, reason = np.zeros(n, dtype=bool), "forced"
        else:
            policy = self.policy_for(student)
            threshold = options.threshold if options.threshold is not None else self.threshold
            escalate, reason = policy.escalate_mask(student.probs, threshold), "unsure"
            confidence = policy.scores(student.probs)
        asked = np.flatnonzero(escalate)
        teacher, cause = (None, None)
        if len(asked):
            teacher, cause = await self._ask_teacher([texts[i] for i in asked])
            if teacher is None and student is None:  # mode=teacher with no teacher: fall back to the student
                student = await self.student(texts)
        teacher_row = {int(item): row for row, item in enumerate(asked)}
        records = []
        predictions = []
        for i in range(n):
            escalated = i in teacher_row
            answered_by_teacher = escalated and teacher is not None
            probs = teacher.probs[teacher_row[i]] if answered_by_teacher else student.probs[i]
            label_index = int(np.argmax(probs))
            cost = (self.costs.student_units if student is not None else 0.0) + (
                self.costs.teacher_units if answered_by_teacher else 0.0
            )
            item_reason = reason if escalated or options.mode == "student" else "confident"
            predictions.append(
                Prediction(
                    label=self.labels[label_index],
                    score=round(float(probs[label_index]), 6),
                    tier="teacher" if answered_by_teacher else "student",
                    escalated=escalated,
                    degraded=escalated and teacher is None,
                    cause=cause if escalated and teacher is None else None,
                    reason=item_reason,
                    confidence=round(float(confidence[i]), 6) if confidence is not None else None,
                    cost=cost,
                    top_k=self._top_k(probs, options.top_k),
                )
            )
            if answered_by_teacher:
                records.append(self._record(request_id, texts[i], reason, student, i, teacher, teacher_row[i]))
        logged = await self._log(records)
        return ClassifyResponse(
            request_id=request_id,
            predictions=predictions,
            versions=ModelVersions(
                student=student.version if student else None, teacher=teacher.version if teacher else None
            ),
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
            text=text,
            reason=reason,
            student_label=self.labels[int(np.argmax(student.probs[i]))] if student else None,
            teacher_label=self.labels[int(np.argmax(teacher.probs[row]))],
            student_probs=student.probs[i].tolist() if student else None,
            teacher_probs=teacher.probs[row].tolist(),
            student_version=student.version if student else None,
            teacher_version=teacher.version,
        )

    async def _log(self, records: list[EscalationRecord]) -> int:
        """Write records durably; a failed write is logged loudly but never fails the request."""
        if not records:
            return 0
        try:
            return await self.append_log(records)
        except Exception as err:
            logger.error("escalation log write failed; %d record(s) not logged: %r", len(records), err)
            return 0
