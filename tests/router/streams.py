"""Streams whose truth is known, for judging online control: each item has a confidence and a
known chance of disagreeing with the teacher, so the served agreement of any threshold is known
exactly, and a controller's settled threshold can be called right or wrong. Used by
``test_control_validity.py`` and ``tests/benchmarks/control_validity.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from router import TargetAgreement
from router.controller import ControlSettings, DriftingEvidence, LiveEvidence, control_step, threshold_grid

GRID = threshold_grid("max_prob", 10)
FINE = np.linspace(0.0, 1.0, 20_001)  # where the truth is integrated


@dataclass(frozen=True)
class Stream:
    """Confidence ~ Beta(``a``, 1) (mostly confident, like a distilled student); the student
    disagrees with the teacher with probability ``scale * (1 - c) ** power`` at confidence c.
    From item ``shift_at`` on, the disagreement is ``shift`` times as likely (a drifted stream)."""

    a: float
    scale: float
    power: float
    shift: float = 1.0
    shift_at: int = 10**12

    def disagreement(self, c: np.ndarray, after_shift: bool) -> np.ndarray:
        return np.clip(self.scale * (1 - c) ** self.power * (self.shift if after_shift else 1.0), 0.0, 1.0)

    def draw(self, rng: np.random.Generator, n: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` items from item ``start`` on: confidence, and whether the student agrees."""
        c = rng.beta(self.a, 1.0, n)
        after = np.arange(start, start + n) >= self.shift_at
        return c, rng.random(n) >= np.where(after, self.disagreement(c, True), self.disagreement(c, False))

    def agreement(self, t: float | np.ndarray, after_shift: bool = False) -> np.ndarray:
        """The true served agreement at threshold(s) ``t``: 1 - P(c >= t and disagree)."""
        wrong = self.a * FINE ** (self.a - 1) * self.disagreement(FINE, after_shift)
        above = np.concatenate([[0.0], np.cumsum((wrong[1:] + wrong[:-1]) / 2 * np.diff(FINE))])  # integral from 0
        return 1.0 - (above[-1] - np.interp(t, FINE, above))

    def cheapest(self, goal: float, after_shift: bool = False) -> float:
        """The cheapest grid threshold whose true served agreement meets ``goal``."""
        return float(GRID[np.flatnonzero(self.agreement(GRID, after_shift) >= goal).min()])

    def share(self, t: float) -> float:
        """The true teacher share at ``t``: P(c < t)."""
        return float(t**self.a)


def random_stream(rng: np.random.Generator, shifted: bool) -> Stream:
    """A stream like a distilled student's: it disagrees with the teacher on 6 to 14 % of items
    overall, mostly at low confidence, so that holding 0.97 needs the teacher on a few to a
    few tens of percent of items."""
    a, power = rng.uniform(5.0, 10.0), rng.uniform(2.0, 4.0)
    mean_gap = a * np.exp(math.lgamma(a) + math.lgamma(power + 1) - math.lgamma(a + power + 1))  # E[(1 - c)^power]
    scale = rng.uniform(0.06, 0.14) / mean_gap
    return Stream(a, scale, power, shift=1.5 if shifted else 1.0, shift_at=10_000 if shifted else 10**12)


class Certified:
    """Online control as ``router.controller`` does it: confidence-sequence bounds,
    fixed-sequence certification, a drift check, audits where the doubt is."""

    def __init__(self, goal: float, audit_rate: float, targeted: bool = True, settings: ControlSettings = ControlSettings()):
        self.goal, self.audit_rate, self.targeted, self.settings = TargetAgreement(goal), audit_rate, targeted, settings
        self.evidence = DriftingEvidence.empty(GRID)

    def audit_probability(self, c: np.ndarray, index: int) -> np.ndarray:
        if not self.targeted:
            return np.full(len(c), self.audit_rate)
        evidence = self.evidence.evidence
        return evidence.audit_probabilities(index, self.audit_rate)[evidence.bins(c)]

    def observe(self, c: np.ndarray, known: np.ndarray, agreed: np.ndarray, probability: np.ndarray) -> None:
        delta = LiveEvidence(GRID)
        delta.add(c, known, agreed)  # the serving student's own bins: known items weigh alike
        self.evidence.merge(delta, self.settings)

    def step(self, index: int) -> int:
        return control_step(self.evidence.current(), index, self.goal, settings=self.settings).index


@dataclass(frozen=True)
class Outcome:
    threshold: float  # the settled threshold
    agreement: float  # its true served agreement on the stream's (final) traffic
    consulted: float  # the teacher's share, answered plus audited, over the last quarter of the stream


def run_stream(stream: Stream, seed: int, procedure, items: int = 10_000, step_items: int = 200) -> Outcome:
    """Serve ``items`` from the safe start (every item to the teacher), a control step of
    ``procedure`` (``Certified``, or another with the same methods) per ``step_items``."""
    rng = np.random.default_rng(seed)
    index = len(GRID) - 1
    consulted, counted = 0.0, 0
    for start in range(0, items, step_items):
        c, agreed = stream.draw(rng, step_items, start)
        escalated = c < GRID[index]
        p_audit = procedure.audit_probability(c, index)
        audited = ~escalated & (rng.random(step_items) < p_audit)
        known = escalated | audited
        procedure.observe(c, known, agreed, np.where(escalated, 1.0, p_audit))
        if start >= items * 3 // 4:
            consulted += float(known.sum())
            counted += step_items
        index = procedure.step(index)
    t = float(GRID[index])
    return Outcome(t, float(stream.agreement(t, after_shift=items > stream.shift_at)), consulted / max(counted, 1))
