"""Settings of the offline work, as plain dataclasses (no torch import, so the CLI's
``--help`` takes its defaults from here instantly). Each field says what it controls."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

DEFAULT_GOAL = "agreement>=0.97"
"""The escalation goal a new student's policy is fitted to, on the validation split: the cascade
answers as the teacher would on 97 % of items. (Agreement needs no labels and is less noisy on a
small validation split than "accuracy>=teacher", which `--goal` still offers.)"""

Mode = Literal["soft", "label-only", "hard"]

WARM_START_EPOCHS = 5
"""Passes of a warm-started refresh round. Each round retrains on the whole log, so the rows of
earlier rounds are passed over again every round; with 15 passes `cascade simulate` saw more
candidates that were more accurate alone yet fitted a higher escalation, which the gate rejects
(docs/measurements.md, "The refresh loop")."""


@dataclass
class TrainConfig:
    """How a student is trained; stored with every version it produces."""

    mode: Mode = "soft"  # soft: teacher probabilities; label-only: teacher's top label; hard: no teacher
    epochs: int = 15  # passes over the training rows
    batch_size: int = 32  # rows per optimiser step
    lr: float = 5e-3  # peak AdamW learning rate, decayed linearly to zero
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    temperature: float = 2.0  # T of the soft-label loss
    alpha: float = 0.9  # weight of the teacher term; 1 - alpha goes to ground-truth labels
    max_length: int = 128  # word pieces kept per text
    seed: int = 0  # seeds initialisation order, shuffling and dropout

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadConfig:
    """How the embedded teacher's linear head is fitted on frozen embeddings."""

    logit_scale: float = 40.0  # normalised embeddings are short; this scales them before the head
    max_length: int = 128  # word pieces embedded per text (recorded, so inference truncates the same way)
    epochs: int = 300  # full-batch Adam steps
    lr: float = 1e-2
    weight_decay: float = 1e-3  # L2 penalty (coupled, as in logistic regression)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


StudentKind = Literal["bow", "transformer"]


@dataclass
class StudentSpec:
    """Which student to build and how to train it."""

    kind: StudentKind = "bow"  # bow: bag of word pieces + MLP; transformer: k of the teacher's layers
    layers: int = 2  # kept teacher layers, for kind "transformer"
    hidden_size: int = 512  # MLP width, for kind "bow"
    train: TrainConfig = field(default_factory=TrainConfig)  # the trainer's settings


@dataclass
class RefreshConfig:
    """How one refresh round builds its data, trains and gates."""

    replay_ratio: float = 2.0  # base-train rows replayed per escalation row, against forgetting
    min_replay: int = 500  # at least this many replayed rows (when the base split has them)
    max_escalation_weight: float = 0.5  # escalation rows' share of the total loss weight, at most
    margin_floor: float = 0.0  # drop records whose teacher top-2 margin is below this (noisy labels)
    since: str | None = None  # only records at or after this ISO time
    min_records: int = 1  # refuse to train on fewer new records
    warm_start: bool = True  # start from the current student's weights (else from the teacher's embeddings)
    tolerance: float = 0.0  # the gate accepts accuracy down to current - tolerance
    goal: str = DEFAULT_GOAL  # the policy goal the gate checks
    workers: int = 0  # 0: train in this process; N: a Ray Train TorchTrainer job with N workers, data through Ray Data
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=WARM_START_EPOCHS))  # from scratch wants TrainConfig().epochs


@dataclass
class WatchConfig:
    """When ``cascade refresh --watch`` runs a round."""

    every_records: int = 1000  # new records that trigger a round
    every_minutes: float = 60.0  # ... or this long since the last round, with at least RefreshConfig.min_records new ones
    poll_s: float = 10.0  # how often the log is checked for new records
