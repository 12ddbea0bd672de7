"""Online goal control: hold a goal on the traffic served, not only on a validation split.

Evidence (``LiveEvidence``) is kept per bin of the student's confidence, on a fixed grid of
candidate thresholds: how many items were routed, for how many the teacher's label is known
(escalated items the teacher answered, and audited confident ones, sampled uniformly), and on
how many of those the student disagreed with the teacher. Within a bin the known items are a
uniform sample, so the bin's disagreement rate estimates the rate of every item in it, and for
any candidate threshold ``t``:

- teacher share(t) = routed items below ``t`` / routed items;
- served agreement(t) = 1 - (items at or above ``t`` the student would answer wrongly) / routed
  items: escalated items agree with the teacher by definition;
- its one-sided lower bound subtracts ``z`` standard errors of that count (binomial sampling
  within each bin, with a finite-population correction: a fully known bin adds no error).

``control_step`` moves the threshold toward the cheapest one whose lower bound meets the goal
(agreement goals) or whose share meets it (budget goals), never past ``teacher_budget`` (the
budget wins, and says so), at most ``max_step`` grid steps per update, and toward a cheaper
threshold only when it clears the goal by ``hysteresis``, so it does not oscillate.
Evidence merges across replicas (``merge``) and ages by halving past ``window_items``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from router.confidence import BOUNDED_MEASURES
from router.errors import RouterError
from router.goals import Goal, TargetAccuracy, TargetAgreement, TeacherBudget


def threshold_grid(measure: str, n_labels: int, points: int = 101) -> np.ndarray:
    """Candidate thresholds covering a measure's range: [0, 1] for bounded measures, [-ln k, 0]
    for negative entropy."""
    low = 0.0 if measure in BOUNDED_MEASURES else -math.log(max(n_labels, 2))
    return np.linspace(low, 0.0 if low < 0 else 1.0, points)


@dataclass
class LiveEvidence:
    """Counts per confidence bin; bin ``b`` holds scores with exactly ``b`` grid points at or
    below them, so threshold ``grid[j]`` escalates bins ``0..j``."""

    grid: np.ndarray
    routed: np.ndarray = field(default=None)  # type: ignore[assignment]
    known: np.ndarray = field(default=None)  # type: ignore[assignment]
    disagreed: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.grid = np.asarray(self.grid, dtype=float)
        bins = len(self.grid) + 1
        for name in ("routed", "known", "disagreed"):
            value = getattr(self, name)
            setattr(self, name, np.zeros(bins) if value is None else np.asarray(value, dtype=float))
            if getattr(self, name).shape != (bins,):
                raise RouterError(f"{name} must have {bins} bins for a grid of {len(self.grid)} thresholds")

    @property
    def items(self) -> float:
        return float(self.routed.sum())

    def add(self, scores: np.ndarray, known: np.ndarray, agreed: np.ndarray) -> None:
        """Add routed items: their confidence, whether the teacher's label is known, and (where
        known) whether the student agreed with it."""
        bins = np.searchsorted(self.grid, np.asarray(scores, dtype=float), side="right")
        known = np.asarray(known, dtype=bool)
        np.add.at(self.routed, bins, 1.0)
        np.add.at(self.known, bins[known], 1.0)
        np.add.at(self.disagreed, bins[known & ~np.asarray(agreed, dtype=bool)], 1.0)

    def merge(self, other: LiveEvidence) -> None:
        """Add another replica's counts (same grid)."""
        if not np.array_equal(self.grid, other.grid):
            raise RouterError("cannot merge evidence kept on different threshold grids")
        self.routed += other.routed
        self.known += other.known
        self.disagreed += other.disagreed

    def age(self, window_items: float) -> None:
        """Halve every count while more than ``window_items`` items are held: recent traffic
        weighs more, so the controller follows drift."""
        while self.items > window_items > 0:
            self.routed *= 0.5
            self.known *= 0.5
            self.disagreed *= 0.5

    def clear(self) -> None:
        self.routed[:] = 0
        self.known[:] = 0
        self.disagreed[:] = 0

    def teacher_share(self) -> np.ndarray:
        """The teacher's share at each grid threshold."""
        total = max(self.items, 1e-12)
        return np.cumsum(self.routed)[:-1] / total

    def agreement(self, z: float = 1.645) -> tuple[np.ndarray, np.ndarray]:
        """The estimated served agreement at each grid threshold and its one-sided lower bound
        (``z`` = 1.645: 95 %). Where nothing above a threshold is known, its bound is what
        escalation alone guarantees (every student answer counted as wrong)."""
        n = self.known
        rate = np.divide(self.disagreed, n, out=np.zeros_like(n), where=n > 0)
        smooth = (self.disagreed + 0.5) / (n + 1.0)  # keeps an all-agreeing bin from claiming no error
        fpc = np.clip(1.0 - n / np.maximum(self.routed, 1e-12), 0.0, 1.0)
        variance = np.divide(self.routed**2 * smooth * (1 - smooth) * fpc, n, out=np.zeros_like(n), where=n > 0)
        # bins routed but never known borrow the pooled rate of the known bins above them
        above = lambda a: np.cumsum(a[::-1])[::-1][1:]  # noqa: E731  (sum over bins > j, per j)
        pooled_n, pooled_k = above(n), above(self.disagreed)
        unknown = np.where(n > 0, 0.0, self.routed)
        pooled = np.divide(pooled_k, pooled_n, out=np.ones_like(pooled_n), where=pooled_n > 0)
        pooled_smooth = (pooled_k + 0.5) / (pooled_n + 1.0)
        wrong = above(self.routed * rate) + above(unknown) * pooled
        var = above(variance) + above(unknown) ** 2 * np.divide(
            pooled_smooth * (1 - pooled_smooth), pooled_n, out=np.full_like(pooled_n, 0.25), where=pooled_n > 0
        )
        total = max(self.items, 1e-12)
        estimate = 1.0 - wrong / total
        lower = 1.0 - np.minimum(wrong + z * np.sqrt(var), above(self.routed)) / total
        nothing_known = pooled_n <= 0
        lower[nothing_known] = 1.0 - above(self.routed)[nothing_known] / total
        return estimate, lower

    def to_dict(self) -> dict:
        return {"grid": self.grid.tolist(), "routed": self.routed.tolist(), "known": self.known.tolist(),
                "disagreed": self.disagreed.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> LiveEvidence:
        return cls(np.asarray(d["grid"]), np.asarray(d["routed"]), np.asarray(d["known"]), np.asarray(d["disagreed"]))


@dataclass(frozen=True)
class ControlSettings:
    """How the controller moves."""

    z: float = 1.645  # one-sided 95 % bound
    max_step: int = 2  # grid steps per update
    hysteresis: float = 0.003  # a cheaper threshold must clear the goal by this much
    min_known: int = 100  # known items above a threshold before the controller trusts its bound
    window_items: float = 50_000  # evidence halves past this many routed items


@dataclass(frozen=True)
class ControlState:
    """Where the controller stands after an update."""

    index: int  # the live threshold is grid[index]
    threshold: float
    estimate: float | None  # served agreement (agreement goals) or teacher share (budget goals) at it
    bound: float | None  # its one-sided bound: lower for agreement, the share itself for budget
    target: float
    held: bool  # the goal holds at the live threshold, with its bound
    budget_limited: bool  # the goal needs more teacher than routing.teacher_budget allows


def agreement_target(goal: Goal, validation: dict[str, float] | None = None) -> float | None:
    """The live agreement an agreement or accuracy goal is held through: its own value, or
    (accuracy goals, until outcome feedback gives live accuracy) the teacher agreement the
    fitted policy reached on validation; None for a budget goal."""
    if isinstance(goal, TargetAgreement):
        return goal.value
    if isinstance(goal, TargetAccuracy):
        value = (validation or {}).get("teacher_agreement")
        if value is None:
            raise RouterError(f"goal {goal} is held through agreement with the teacher: the policy needs a validation teacher_agreement")
        return float(value)
    return None


def control_step(evidence: LiveEvidence, index: int, goal: Goal, teacher_budget: float = 1.0,
                 validation: dict[str, float] | None = None, settings: ControlSettings = ControlSettings()) -> ControlState:
    """One bounded move of the live threshold (see the module docstring)."""
    grid = evidence.grid
    if not 0 <= index < len(grid):
        raise RouterError(f"index must lie in [0, {len(grid)}); got {index}")
    share = evidence.teacher_share()
    allowed = share <= teacher_budget + 1e-12
    highest_allowed = int(np.flatnonzero(allowed).max()) if allowed.any() else 0

    if isinstance(goal, TeacherBudget):
        target = goal.max_share
        fits = share <= min(target, teacher_budget) + 1e-12
        desired = int(np.flatnonzero(fits).max()) if fits.any() else 0
        # hysteresis in share: go up (more teacher) only if the higher threshold stays under target - margin
        if desired > index and share[min(index + 1, len(grid) - 1)] > target - settings.hysteresis:
            desired = index
        new = index + int(np.clip(desired - index, -settings.max_step, settings.max_step))
        return ControlState(new, float(grid[new]), float(share[new]), float(share[new]), target,
                            bool(share[new] <= target + 1e-12), bool(target > teacher_budget))

    target = agreement_target(goal, validation)
    estimate, lower = evidence.agreement(settings.z)
    known_above = np.cumsum(evidence.known[::-1])[::-1][1:]
    trusted = known_above >= settings.min_known
    meets = (lower >= target) & allowed
    clears = (lower >= target + settings.hysteresis) & allowed & trusted
    if not meets[index] or not allowed[index]:  # the goal fails here: toward the cheapest threshold that holds it
        candidates = np.flatnonzero(meets & (np.arange(len(grid)) > index))
        desired = int(candidates.min()) if candidates.size else highest_allowed
        if not allowed[index]:
            desired = min(desired, highest_allowed)
    else:  # it holds: toward a cheaper one only if that one clears the goal by the hysteresis
        candidates = np.flatnonzero(clears & (np.arange(len(grid)) < index))
        desired = int(candidates.min()) if candidates.size else index
    new = index + int(np.clip(desired - index, -settings.max_step, settings.max_step))
    budget_limited = bool((lower >= target).any() and not meets.any())  # only thresholds past the budget hold it
    return ControlState(new, float(grid[new]), float(estimate[new]), float(lower[new]), target,
                        bool(lower[new] >= target and allowed[new]), budget_limited)
