"""The HTTP API's request and response bodies (FastAPI documents them at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router import CAUSES
from router.decision import Mode


class ClassifyOptions(BaseModel):
    """Per-request choices."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: "3" is not a top_k, true is not a threshold

    mode: Mode = Field("cascade", description="cascade: student, escalating unsure items; student or teacher: that model only")
    threshold: float | None = Field(
        None, allow_inf_nan=False,
        description="override the escalation threshold for this request; in [0, 1] for max_prob and margin, any number for neg_entropy",
    )
    top_k: int = Field(0, ge=0, le=100, description="also return the k most probable labels with their probabilities")
    evaluation: bool = Field(False, description="evaluation traffic: answered as usual, never logged for distillation")


class ClassifyRequest(BaseModel):
    """``inputs`` is one text or a list of texts."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"inputs": "my card has not arrived", "options": {"top_k": 3}}]})

    inputs: str | list[str] = Field(description="a text or a non-empty list of texts")
    options: ClassifyOptions = ClassifyOptions()


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    """The answer for one text."""

    label: str
    score: float = Field(description="probability of `label` under the model that answered")
    tier: Literal["student", "teacher"] = Field(description="which model answered")
    escalated: bool = Field(description="the policy wanted the teacher's answer (reason unsure, or forced by mode teacher); it answered unless `degraded`")
    consulted: bool = Field(description="the teacher's answer for this item came back: it answered it (tier teacher) or audited it (reason audit)")
    degraded: bool = Field(description="escalated, but the teacher did not answer; the student did, and `cause` says why")
    cause: str | None = Field(None, description="why degraded: " + ", ".join(CAUSES))
    reason: str = Field(description="confident, unsure, forced (mode), or audit")
    confidence: float | None = Field(None, description="the student's calibrated confidence used for routing")
    cost: float = Field(description="cost units this item incurred: the student's if it scored the item, plus the teacher's if consulted")
    top_k: list[LabelScore] | None = None


class ModelVersions(BaseModel):
    student: str | None
    teacher: str | None


class ClassifyResponse(BaseModel):
    request_id: str
    predictions: list[Prediction]
    versions: ModelVersions
    logged: int = Field(description="escalation records durably written for this request")
    cost: float = Field(description="cost units of the whole request")


class LiveStatus(BaseModel):
    """What ``/v1/models`` and the metrics report of online control."""

    goal: str
    student: str | None = None  # the student version the evidence belongs to
    fitted_threshold: float | None = None
    threshold: float | None = None  # the live threshold, from the safe start on; None: control off for this student
    estimate: float | None = None  # served agreement or accuracy (see ``through``), or teacher share (budget goals)
    bound: float | None = None  # its lower confidence-sequence bound (95 % at every look at once): the certified bound
    target: float | None = None
    through: str | None = None  # "agreement", "accuracy" (from outcome feedback) or "share" (budget goals)
    feedback_items: float = 0.0  # items of this student with a true label (accuracy goals)
    held: bool | None = None  # the goal holds at the live threshold, with its bound
    budget_limited: bool = False  # the goal needs more teacher than routing.teacher_budget allows
    evidence_items: float = 0.0  # routed items behind the estimate (aged)
    known_items: float = 0.0  # of those, items whose teacher label is known
    started_from: Literal["shadow", "safe_start"] | None = None  # where control started this student: its shadow's evidence, or every item to the teacher
    start_threshold: float | None = None  # the threshold it started at
    drift_restarts: int = 0  # times the evidence restarted from recent traffic that disagreed more than it predicted
    audit_near: float | None = None  # audit probability of confident items just above the threshold (10 grid steps) ...
    audit_far: float | None = None  # ... and of the more confident rest: audits go where the doubt is, routing.audit_rate on average
    updated_at: str | None = None


class ModelsResponse(BaseModel):
    labels: list[str]
    versions: ModelVersions
    threshold: float | None = Field(description="the threshold every ingress replica routes with")
    threshold_source: Literal["admin", "live", "config", "fitted"] = Field(
        description="where it comes from: /v1/admin/threshold, online control (routing.control), routing.threshold, or the student's fitted policy"
    )
    fitted_threshold: float | None = Field(description="the student's fitted threshold")
    live: LiveStatus | None = Field(None, description="online control of the goal on live traffic (null: off, or no evidence yet for this student)")
    shadow: dict[str, Any] | None = Field(None, description="a candidate student judged in shadow on live traffic: its evidence so far and the verdict")
    temperature: float | None
    measure: str | None
    goal: str | None


class ErrorResponse(BaseModel):
    error: str
