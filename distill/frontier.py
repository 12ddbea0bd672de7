"""Fitting a student's escalation policy for a goal, and the cost/accuracy frontier.

``calibrate`` fits temperature and threshold(s) on the validation split and registers the
result as a new student version (weights shared with its parent). ``frontier_table`` and
``plot_frontier`` show, for each threshold, escalation rate, cascade accuracy, teacher
agreement and cost per 1,000 requests, with teacher-only, student-only and the chosen
operating point marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.backends import HFClassifier
from distill.data import DataSplits, TextDataset
from distill.metadata import ModelMeta
from distill.pipeline import TeacherCache
from distill.registry import Registry
from router import CostModel, EscalationPolicy, FrontierPoint, cascade_figures, fit_policy, frontier


def split_outputs(student: HFClassifier, teacher: HFClassifier, data: TextDataset, cache: TeacherCache) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Student probabilities, teacher probabilities (cached) and label ids on one split."""
    labels = data.label_ids(teacher.labels) if data.labels is not None else None
    return student.predict_proba(data.texts), np.exp(cache.log_probs(teacher, data)), labels


def operating_point(policy: EscalationPolicy, student_probs: np.ndarray, teacher_probs: np.ndarray, labels: np.ndarray | None, costs: CostModel) -> dict:
    """The cascade's figures on a split at ``policy``: escalation, accuracy, agreement, cost, ECE."""
    f = cascade_figures(student_probs, teacher_probs, labels, policy, costs)
    out = {
        "escalation_rate": round(f.escalation_rate, 4),
        "teacher_agreement": round(f.teacher_agreement, 4),
        "cost_per_1000": round(f.cost_per_1000, 1),
        "teacher_only_cost_per_1000": round(costs.teacher_only_per_1000(), 1),
    }
    if labels is not None:
        out |= {
            "cascade_accuracy": round(f.accuracy, 4),
            "teacher_accuracy": round(f.teacher_accuracy, 4),
            "student_accuracy": round(f.student_accuracy, 4),
            "student_ece_before": round(f.student_ece, 4),
            "student_ece_after": round(f.calibrated_ece, 4),
        }
    return out


def calibrate(
    registry: Registry, student: HFClassifier, teacher: HFClassifier, splits: DataSplits, cache: TeacherCache,
    goal: str, measure: str = "max_prob", per_class: bool = False, costs: CostModel = CostModel(), promote: bool = True,
) -> tuple[ModelMeta, dict]:
    """Fit the policy for ``goal`` on validation, register it as a new student version, and
    report the figures on validation and (when present) test."""
    student_probs, teacher_probs, labels = split_outputs(student, teacher, splits.validation, cache)
    policy = fit_policy(student_probs, teacher_probs, labels, goal, measure=measure, per_class=per_class)
    meta = registry.derive("student", student.version, policy=policy.to_dict())
    if promote:
        registry.promote("student", meta.version, note=f"calibrated for {goal}")
    report = {"version": meta.version, "parent": student.version, "goal": policy.goal, "threshold": policy.threshold,
              "temperature": round(policy.temperature, 4), "class_thresholds": len(policy.class_thresholds),
              "validation": operating_point(policy, student_probs, teacher_probs, labels, costs)}
    if splits.test is not None:
        report["test"] = operating_point(policy, *split_outputs(student, teacher, splits.test, cache), costs)
    return meta, report


def frontier_table(points: list[FrontierPoint], chosen: FrontierPoint, teacher_accuracy: float | None, student_accuracy: float | None, costs: CostModel) -> str:
    """Markdown: one row per threshold, plus student-only and teacher-only; the chosen point in bold."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = ["| threshold | escalation rate | cascade accuracy | teacher agreement | cost / 1,000 |", "|---|---|---|---|---|"]
    rows.append(f"| student only | 0.00% | {fmt(student_accuracy)} | - | {costs.student_only_per_1000():.0f} |")
    for p in [*points, chosen]:
        bold = "**" if p is chosen else ""
        rows.append(f"| {bold}{p.threshold:.4f}{' (chosen)' if p is chosen else ''}{bold} | {p.escalation_rate:.2%} | {fmt(p.accuracy)} | {p.teacher_agreement:.4f} | {p.cost_per_1000:.0f} |")
    rows.append(f"| teacher only | 100.00% | {fmt(teacher_accuracy)} | 1.0000 | {costs.teacher_only_per_1000():.0f} |")
    return "\n".join(rows)


def frontier_points(policy: EscalationPolicy, student_probs: np.ndarray, teacher_probs: np.ndarray, labels: np.ndarray | None, costs: CostModel, n_points: int = 25) -> tuple[list[FrontierPoint], FrontierPoint]:
    """The frontier at ``n_points`` thresholds and the policy's own operating point."""
    points = frontier(student_probs, teacher_probs, labels, policy, costs, n_points=n_points)
    at = operating_point(policy, student_probs, teacher_probs, labels, costs)
    chosen = FrontierPoint(policy.threshold, at["escalation_rate"], at.get("cascade_accuracy"), at["teacher_agreement"], at["cost_per_1000"])
    return points, chosen


def plot_frontier(points: list[FrontierPoint], chosen: FrontierPoint, teacher_accuracy: float, student_accuracy: float, costs: CostModel, path: Path, title: str) -> None:
    """A PNG of cascade accuracy against cost per 1,000 requests (and escalation rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.plot([p.cost_per_1000 for p in points], [p.accuracy for p in points], "o-", color="tab:blue", markersize=4, label="cascade at a threshold")
    ax.scatter([costs.student_only_per_1000()], [student_accuracy], s=80, color="tab:green", zorder=3, label=f"student only ({student_accuracy:.2%})")
    ax.scatter([costs.teacher_only_per_1000()], [teacher_accuracy], s=80, color="tab:red", zorder=3, label=f"teacher only ({teacher_accuracy:.2%})")
    ax.scatter([chosen.cost_per_1000], [chosen.accuracy], s=220, marker="*", color="gold", edgecolor="black", zorder=4,
               label=f"chosen: {chosen.escalation_rate:.1%} escalated, {chosen.accuracy:.2%}")
    ax.axhline(teacher_accuracy, color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlabel(f"cost per 1,000 requests ({costs.unit}; student {costs.student_units:g}, teacher {costs.teacher_units:g} per call)")
    ax.set_ylabel("cascade accuracy")
    ax.set_title(title)
    top = ax.secondary_xaxis("top", functions=(lambda c: (c / 1000 - costs.student_units) / max(costs.teacher_units, 1e-9) * 100,
                                                lambda e: (costs.student_units + e / 100 * costs.teacher_units) * 1000))
    top.set_xlabel("escalation rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
