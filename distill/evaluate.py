"""Evaluation of teacher, student and the cascade on one labelled split.

Quality: accuracy, macro-F1, agreement with the teacher, expected calibration error, recall
of the worst classes. Speed: median single-query latency and batched queries/s (the batched
figure is the timed pass that also produced the predictions, so nothing runs twice).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from distill.backends import Classifier
from router import CascadeFigures, CostModel, EscalationPolicy, cascade_figures, expected_calibration_error
from router.figures import macro_f1


def worst_class_recall(predicted: np.ndarray, labels: np.ndarray, label_names: Sequence[str], k: int = 5) -> list[dict]:
    """The ``k`` classes with the lowest recall, lowest first."""
    recalls = []
    for c in np.unique(labels):
        members = labels == c
        recalls.append((float(np.mean(predicted[members] == c)), label_names[int(c)], int(members.sum())))
    recalls.sort()
    return [{"label": name, "recall": round(r, 4), "support": n} for r, name, n in recalls[:k]]


def quality(probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str], teacher_top: np.ndarray | None) -> dict:
    """Accuracy, macro-F1, teacher agreement, ECE and worst-class recall of one model's probabilities."""
    predicted = probs.argmax(1)
    out = {
        "accuracy": round(float(np.mean(predicted == labels)), 4),
        "macro_f1": round(macro_f1(predicted, labels), 4),
        "ece": round(expected_calibration_error(probs, labels), 4),
        "worst_classes": worst_class_recall(predicted, labels, label_names),
    }
    if teacher_top is not None:
        out["teacher_agreement"] = round(float(np.mean(predicted == teacher_top)), 4)
    return out


def timed_predictions(model: Classifier, texts: Sequence[str], single_queries: int = 200) -> tuple[np.ndarray, dict]:
    """Probabilities for ``texts`` and the speed figures: median single-query latency (ms,
    over up to ``single_queries`` texts, after a warm-up) and batched queries/s."""
    model.predict_proba(texts[:8])  # warm-up: first calls pay for lazy initialisation
    started = time.perf_counter()
    probs = model.predict_proba(texts)
    batched_s = time.perf_counter() - started
    latencies = []
    for text in texts[:single_queries]:
        t0 = time.perf_counter()
        model.predict_proba([text])
        latencies.append(time.perf_counter() - t0)
    speed = {
        "latency_ms": round(float(np.median(latencies)) * 1000, 3),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 3),
        "queries_per_s": round(len(texts) / batched_s, 1),
    }
    return probs, speed


def cascade_report(figures: CascadeFigures, policy: EscalationPolicy, costs: CostModel, threshold: float | None = None) -> dict:
    """The cascade's accuracy, escalation rate and cost (``figures``, labelled) at ``policy`` or at ``threshold``."""
    return {
        "accuracy": round(figures.accuracy, 4),
        "macro_f1": round(figures.macro_f1, 4),
        "teacher_agreement": round(figures.teacher_agreement, 4),
        "escalation_rate": round(figures.escalation_rate, 4),
        "threshold": threshold if threshold is not None else policy.threshold,
        "measure": policy.measure,
        "temperature": round(policy.temperature, 4),
        "cost_per_1000": round(figures.cost_per_1000, 2),
        "teacher_only_cost_per_1000": round(costs.teacher_only_per_1000(), 2),
    }


def evaluate(
    teacher: Classifier,
    student: Classifier,
    texts: Sequence[str],
    labels: np.ndarray,
    policy: EscalationPolicy,
    costs: CostModel,
    threshold: float | None = None,
) -> dict:
    """The full report ``cascade eval`` prints: teacher, student and cascade on one split."""
    teacher_probs, teacher_speed = timed_predictions(teacher, texts)
    student_probs, student_speed = timed_predictions(student, texts)
    figures = cascade_figures(student_probs, teacher_probs, labels, policy, costs, threshold)
    return {
        "rows": len(texts),
        "teacher": {"version": teacher.version, **quality(teacher_probs, labels, teacher.labels, None), **teacher_speed},
        "student": {
            "version": student.version,
            **quality(student_probs, labels, student.labels, teacher_probs.argmax(1)),
            "ece_calibrated": round(figures.calibrated_ece, 4),
            **student_speed,
        },
        "cascade": cascade_report(figures, policy, costs, threshold),
        "student_speedup": round(teacher_speed["latency_ms"] / max(student_speed["latency_ms"], 1e-9), 1),
    }
