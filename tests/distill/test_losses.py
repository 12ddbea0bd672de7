"""Distillation losses against hand-derived values (CPU, fixed seed, one thread)."""

import math

import torch

from distill.losses import IGNORE, hard_label_loss, label_only_loss, soft_label_loss

torch.set_num_threads(1)


def test_soft_loss_is_zero_when_student_matches_teacher_and_alpha_is_one():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    loss = soft_label_loss(logits, logits, torch.tensor([0, 1, 2, 3]), temperature=3.0, alpha=1.0)
    assert abs(float(loss)) < 1e-6


def test_soft_loss_matches_hinton_formula_on_a_two_class_example():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.log(torch.tensor([[0.8, 0.2]]))
    t, alpha = 2.0, 0.75
    # teacher at T: softmax(log p / 2) = sqrt(p) normalised; student at T: uniform
    q = torch.sqrt(torch.tensor([0.8, 0.2]))
    q = q / q.sum()
    kl = float((q * (q.log() - math.log(0.5))).sum())
    ce = math.log(2)  # uniform student, label 0
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert abs(float(soft_label_loss(student, teacher, torch.tensor([0]), t, alpha)) - expected) < 1e-6


def test_rows_without_label_use_the_soft_term_alone():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    unlabelled = soft_label_loss(student, teacher, torch.tensor([IGNORE]), 1.0, alpha=0.5)
    pure_soft = soft_label_loss(student, teacher, torch.tensor([0]), 1.0, alpha=1.0)
    assert torch.allclose(unlabelled, pure_soft)


def test_label_only_loss_is_cross_entropy_on_the_teacher_label():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    expected = float(torch.nn.functional.cross_entropy(student, torch.tensor([1])))
    assert abs(float(label_only_loss(student, torch.tensor([1]), torch.tensor([IGNORE]))) - expected) < 1e-6


def test_weights_pick_rows():
    student = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0])
    only_second = hard_label_loss(student, labels, torch.tensor([0.0, 1.0]))
    assert torch.allclose(only_second, torch.nn.functional.cross_entropy(student[1:], labels[1:]))
