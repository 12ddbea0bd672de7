"""Routing for the student/teacher cascade: confidence, calibration, thresholds, budgets, audits, breaker.

Pure Python and numpy, so it is testable in milliseconds and reusable offline.
"""

from router.audit import AgreementEstimate, AuditSampler
from router.breaker import CircuitBreaker
from router.budget import TeacherRateLimiter
from router.calibration import apply_temperature, expected_calibration_error, fit_temperature
from router.confidence import MEASURES, confidence, margin, max_probability, negative_entropy
from router.controller import (ControlSettings, ControlStep, LiveEvidence, LiveOutcomes, agreement_target, certified_start, control_step,
                               threshold_grid)
from router.cost import CostModel
from router.decision import CAUSES, MODES, REASONS, Decision, Decisions, Route, route, settle
from router.errors import RouterError
from router.figures import CascadeFigures, cascade_figures, cascade_predictions
from router.goals import Goal, TargetAccuracy, TargetAgreement, TeacherBudget, parse_goal
from router.policy import EscalationPolicy
from router.thresholds import FrontierPoint, fit_policy, frontier

__all__ = [
    "ControlSettings",
    "ControlStep",
    "LiveEvidence",
    "LiveOutcomes",
    "agreement_target",
    "certified_start",
    "control_step",
    "threshold_grid",
    "CAUSES",
    "MODES",
    "REASONS",
    "Decision",
    "Decisions",
    "Route",
    "route",
    "settle",
    "MEASURES",
    "AgreementEstimate",
    "AuditSampler",
    "CascadeFigures",
    "CircuitBreaker",
    "CostModel",
    "EscalationPolicy",
    "FrontierPoint",
    "Goal",
    "RouterError",
    "TargetAccuracy",
    "TargetAgreement",
    "TeacherBudget",
    "TeacherRateLimiter",
    "apply_temperature",
    "cascade_figures",
    "cascade_predictions",
    "confidence",
    "expected_calibration_error",
    "fit_policy",
    "fit_temperature",
    "frontier",
    "margin",
    "max_probability",
    "negative_entropy",
    "parse_goal",
]
