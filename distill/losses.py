"""Knowledge-distillation losses.

The soft-label loss is Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network" (2015): ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)``,
where ``x_T`` is softmax(logits / T). The T^2 factor keeps the soft term's gradients on the
same scale as the hard term's when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
"""Label id of a row with no ground-truth label (for example an escalation record)."""


def soft_label_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.9,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton KD loss, per row weighted; rows whose label is ``IGNORE`` use the soft term alone.

    ``teacher_log_probs`` may be any log-probabilities or logits of the teacher: the softmax
    at temperature T is invariant to a per-row constant.
    """
    t = temperature
    teacher_t = F.log_softmax(teacher_log_probs / t, dim=-1)
    student_t = F.log_softmax(student_logits / t, dim=-1)
    kl = (teacher_t.exp() * (teacher_t - student_t)).sum(-1) * (t * t)
    has_label = labels != IGNORE
    ce = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
    per_row = torch.where(has_label, alpha * kl + (1 - alpha) * ce, kl)
    return _weighted_mean(per_row, weights)


def label_only_loss(
    student_logits: torch.Tensor,
    teacher_labels: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.9,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distillation from a black-box teacher that returns only its top label:
    ``alpha * CE(student, teacher_label) + (1 - alpha) * CE(student, y)`` (soft term alone
    where ``y`` is ``IGNORE``)."""
    teacher_ce = F.cross_entropy(student_logits, teacher_labels, reduction="none")
    has_label = labels != IGNORE
    ce = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
    per_row = torch.where(has_label, alpha * teacher_ce + (1 - alpha) * ce, teacher_ce)
    return _weighted_mean(per_row, weights)


def hard_label_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain cross-entropy on ground-truth labels: the no-teacher baseline."""
    return _weighted_mean(F.cross_entropy(student_logits, labels, reduction="none"), weights)


def _weighted_mean(per_row: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp(min=1e-12)
