"""Online goal control: hold a goal on the traffic served, not only on a validation split.

Evidence (``LiveEvidence``) is kept per bin of the student's confidence, on a fixed grid of
candidate thresholds: how many items were routed, and, for the items whose teacher label is
known (escalated items the teacher answered, and audited confident ones), on how many the
student disagreed with the teacher, each weighted by the inverse of the chance it had of being
known (1 when escalated, its audit probability otherwise: audits go where the doubt is,
``router.certify.allocate_audits``). For any candidate threshold ``t``:

- teacher share(t) = routed items below ``t`` / routed items;
- served agreement(t) = 1 - (items at or above ``t`` the student answers against the teacher) /
  routed items: escalated items agree with the teacher by definition; the count is the
  weighted (Horvitz-Thompson) one, unbiased whatever the audit allocation was at the time;
- its lower bound is a one-sided confidence sequence (``router.certify.cs_radius``): valid at
  every look at once, so the controller may look every ``update_every`` items.

Accuracy goals are held through that agreement (the target: the agreement the fitted policy
reached on validation) until outcome feedback gives live accuracy: once ``min_feedback`` items
of the student have a true label (``LiveOutcomes``, per bin), they are held through the served
accuracy itself. Escalated items are as right as the teacher is in their bin, the others as
right as the student is; a fixed target (``accuracy>=0.93``) takes the lower bound of that;
``accuracy>=teacher`` is a non-inferiority claim, the bound of the served answers' lead over
the teacher's own on the same traffic, from the items both models labelled (at the top every
item is the teacher's and the lead is exactly 0): the student answers a bin only where the
feedback shows, with that confidence, that its answers there are no worse than the teacher's.

``control_step`` certifies thresholds by fixed-sequence testing (``router.certify``): from the
safe end (every item to the teacher) down, each passes while its bound meets the goal, and the
first that fails ends the sequence, so choosing among the whole grid costs nothing more. A
current threshold that is not certified moves straight to the cheapest certified one (more
teacher is the safe side; for an accuracy goal held through feedback, where a teacher can be
the less accurate model, the nearest threshold below that holds it when the top does not). A
move down goes only to a certified threshold that clears the goal by ``hysteresis``, so the
threshold does not oscillate, and at most ``max_step`` grid steps while fewer than
``min_known`` items above it are known (thin evidence). Budget goals move straight to the
share they allow; no threshold past ``teacher_budget`` is taken (the budget wins, and says so).
A ``floor`` keeps the threshold at or above a grid point (a student whose fitted policy
escalates everything is held there). Evidence merges across replicas (``merge``) and ages by
halving past ``window_items``, which follows drift at the price of a wider bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from router.certify import allocate_audits, cs_radius, fixed_sequence
from router.confidence import BOUNDED_MEASURES
from router.errors import RouterError
from router.goals import Goal, TargetAccuracy, TargetAgreement, TeacherBudget


def threshold_grid(measure: str, n_labels: int, points: int = 101) -> np.ndarray:
    """Candidate thresholds covering a measure's range: [0, 1] for bounded measures, [-ln k, 0]
    for negative entropy."""
    low = 0.0 if measure in BOUNDED_MEASURES else -math.log(max(n_labels, 2))
    return np.linspace(low, 0.0 if low < 0 else 1.0, points)


def _above(a: np.ndarray) -> np.ndarray:
    """Per grid threshold j, the sum of ``a`` over the bins it does not escalate (bins > j)."""
    return np.cumsum(a[::-1])[::-1][1:]


def _below(a: np.ndarray) -> np.ndarray:
    """Per grid threshold j, the sum of ``a`` over the bins it escalates (bins <= j)."""
    return np.cumsum(a)[:-1]


EVIDENCE_FORMAT = 2  # inverse-probability weighted counts; documents of another format start afresh


@dataclass
class LiveEvidence:
    """Counts per confidence bin; bin ``b`` holds scores with exactly ``b`` grid points at or
    below them, so threshold ``grid[j]`` escalates bins ``0..j``. A known item (its teacher label
    seen) counts in its bin with a weight, the inverse of the chance ``p`` it had of being known
    as far as that chance could depend on its disagreement within the bin; each bin's
    disagreement rate is the weighted mean over its known items (Hajek), and its precision that
    of the weights' effective sample size (Kish).

    For the serving student's own bins, whether an item is known depends on nothing but its bin
    and chance (escalated below the threshold, audited above it), so within a bin the known items
    are a uniform sample and weigh alike (``p`` = 1): the items of a bin that was escalated
    before count in full. A shadow candidate's bins are another matter: there, whether an item is
    known depends on the serving student's confidence, so each weighs 1 / p (1 where the serving
    student escalated it, its audit probability otherwise), which keeps the candidate's
    estimates unbiased."""

    grid: np.ndarray
    routed: np.ndarray = field(default=None)  # type: ignore[assignment]  # items
    known: np.ndarray = field(default=None)  # type: ignore[assignment]  # items whose teacher label was seen
    weight: np.ndarray = field(default=None)  # type: ignore[assignment]  # sum of the known items' weights
    weight_sq: np.ndarray = field(default=None)  # type: ignore[assignment]  # sum of their squares
    disagreed: np.ndarray = field(default=None)  # type: ignore[assignment]  # sum of the weights of known disagreeing items

    COUNTS = ("routed", "known", "weight", "weight_sq", "disagreed")

    def __post_init__(self) -> None:
        self.grid = np.asarray(self.grid, dtype=float)
        bins = len(self.grid) + 1
        for name in self.COUNTS:
            value = getattr(self, name)
            setattr(self, name, np.zeros(bins) if value is None else np.asarray(value, dtype=float))
            if getattr(self, name).shape != (bins,):
                raise RouterError(f"{name} must have {bins} bins for a grid of {len(self.grid)} thresholds")

    @property
    def items(self) -> float:
        return float(self.routed.sum())

    def bins(self, scores: np.ndarray) -> np.ndarray:
        """The bin of each score."""
        return np.searchsorted(self.grid, np.asarray(scores, dtype=float), side="right")

    def add(self, scores: np.ndarray, known: np.ndarray, agreed: np.ndarray, probability: np.ndarray | float = 1.0) -> None:
        """Add routed items: their confidence, whether the teacher's label is known, (where known)
        whether the student agreed with it, and the chance each had of being known (see the class
        docstring: 1 for the serving student's own items)."""
        bins = self.bins(scores)
        known = np.asarray(known, dtype=bool)
        p = np.broadcast_to(np.asarray(probability, dtype=float), bins.shape)
        if (p[known] <= 0).any() or (p > 1).any():
            raise RouterError("a known item's probability of being known must lie in (0, 1]")
        weight = np.divide(1.0, p, out=np.zeros(len(bins)), where=known)
        disagreed = known & ~np.asarray(agreed, dtype=bool)
        np.add.at(self.routed, bins, 1.0)
        np.add.at(self.known, bins[known], 1.0)
        np.add.at(self.weight, bins, weight)
        np.add.at(self.weight_sq, bins, weight**2)
        np.add.at(self.disagreed, bins[disagreed], weight[disagreed])

    def merge(self, other: LiveEvidence) -> None:
        """Add another replica's counts (same grid)."""
        if not np.array_equal(self.grid, other.grid):
            raise RouterError("cannot merge evidence kept on different threshold grids")
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def age(self, window_items: float) -> None:
        """Halve every count while more than ``window_items`` items are held: recent traffic
        weighs more, so the controller follows drift (the effective sample halves; the weights'
        squares are halved too, so that weighted and plain evidence age alike)."""
        while self.items > window_items > 0:
            for name in self.COUNTS:
                setattr(self, name, getattr(self, name) * 0.5)

    def teacher_share(self) -> np.ndarray:
        """The teacher's share at each grid threshold."""
        total = max(self.items, 1e-12)
        return np.cumsum(self.routed)[:-1] / total

    def disagreement(self) -> np.ndarray:
        """Each bin's estimated disagreement rate, shrunk toward the pooled rate (two pseudo-items)."""
        pooled = (self.disagreed.sum() + 0.5) / (self.weight.sum() + 1.0)
        return (self.disagreed + 2.0 * pooled) / (self.weight + 2.0)

    def effective_known(self) -> np.ndarray:
        """Each bin's known items as an unweighted sample of equal precision (Kish): (sum w)^2 / sum w^2."""
        return np.divide(self.weight**2, self.weight_sq, out=np.zeros_like(self.weight), where=self.weight_sq > 0)

    def agreement(self, alpha: float = 0.05, horizon: float = 1_000) -> tuple[np.ndarray, np.ndarray]:
        """The estimated served agreement at each grid threshold and its lower confidence-sequence
        bound (``router.certify``: valid at every look at once). A bin's rate for the variance is
        shrunk toward the pooled rate above the threshold, so that a bin whose few known items all
        agreed does not claim a zero error; routed items of bins never known take that pooled
        rate. Where nothing above a threshold is known, its bound is what escalation alone
        guarantees (every student answer counted as wrong)."""
        n, routed = self.effective_known(), self.routed
        rate = np.divide(self.disagreed, self.weight, out=np.zeros_like(n), where=self.weight > 0)
        pooled_n, pooled_k = _above(n), _above(n * rate)
        pooled = (pooled_k + 0.5) / (pooled_n + 1.0)  # the rate above each threshold, kept off 0 and 1
        # per threshold j (rows) and bin b (columns): bin b's rate for the variance, shrunk toward the pool above j
        shrunk = (n[None, :] * rate[None, :] + 2.0 * pooled[:, None]) / (n[None, :] + 2.0)
        per_bin = np.divide(routed**2, n, out=np.zeros_like(n), where=n > 0)[None, :] * shrunk * (1 - shrunk)
        is_above = np.arange(len(n))[None, :] > np.arange(len(self.grid))[:, None]
        unknown = _above(np.where(n > 0, 0.0, routed))  # routed in bins never known: they take the pooled rate
        wrong = _above(routed * rate) + unknown * pooled
        var = (per_bin * is_above).sum(axis=1) + unknown**2 * pooled * (1 - pooled) / np.maximum(pooled_n, 1.0)
        total = max(self.items, 1e-12)
        estimate = 1.0 - wrong / total
        lower = 1.0 - np.minimum(wrong + _sum_radius(var, total, alpha, horizon), _above(routed)) / total
        nothing_known = pooled_n <= 0
        estimate[nothing_known] = lower[nothing_known] = 1.0 - _above(routed)[nothing_known] / total
        return estimate, lower

    def drift(self, recent: LiveEvidence, min_known: float = 20.0) -> float:
        """How much more the ``recent`` items (kept apart since the last check) disagree than this
        evidence's per-bin rates predict, in standard deviations (the rates' own uncertainty
        counted), over the bins this evidence knows at least ``min_known`` items of: every such
        bin counts, escalated ones most (their items are all known), so a shift shows within a
        few hundred items. 0 when nothing can be compared."""
        n = self.effective_known()
        usable = n >= min_known
        if not usable.any():
            return 0.0
        rate = (self.disagreed[usable] + 0.5) / (self.weight[usable] + 1.0)
        w, w_sq = recent.weight[usable], recent.weight_sq[usable]
        expected = float((w * rate).sum())
        variance = float((w_sq * rate * (1 - rate)).sum() + (w**2 * rate * (1 - rate) / n[usable]).sum())
        return (float(recent.disagreed[usable].sum()) - expected) / math.sqrt(variance + 1e-12)

    def audit_probabilities(self, index: int, rate: float, floor_share: float = 0.25) -> np.ndarray:
        """Per-bin audit probabilities for routing at ``grid[index]``: the bins it answers share
        ``rate`` on average, allocated where the student disagrees most
        (``router.certify.allocate_audits``); escalated bins keep ``rate`` (never used)."""
        probabilities = np.full(len(self.routed), float(rate))
        answered = slice(index + 1, None)
        if self.routed[answered].sum() > 0:
            probabilities[answered] = allocate_audits(rate, self.routed[answered], self.disagreement()[answered], floor_share)
        return probabilities

    def to_dict(self) -> dict:
        return {"format": EVIDENCE_FORMAT, "grid": self.grid.tolist(), **{name: getattr(self, name).tolist() for name in self.COUNTS}}

    @classmethod
    def from_dict(cls, d: dict) -> LiveEvidence:
        """Evidence as ``to_dict`` wrote it; RouterError for another format."""
        if d.get("format") != EVIDENCE_FORMAT:
            raise RouterError(f"evidence of format {d.get('format')!r}, expected {EVIDENCE_FORMAT}")
        return cls(np.asarray(d["grid"]), *(np.asarray(d[name]) for name in cls.COUNTS))


@dataclass
class DriftingEvidence:
    """Evidence that follows drift: new items gather apart (``recent``) until ``drift_items`` of
    them are in; then, when they disagree with the teacher more than the evidence predicts by
    ``drift_z`` standard deviations (``LiveEvidence.drift``), the evidence restarts from them,
    else they join it. The old evidence no longer vouches for traffic that has changed."""

    evidence: LiveEvidence
    recent: LiveEvidence

    @classmethod
    def empty(cls, grid: np.ndarray) -> DriftingEvidence:
        return cls(LiveEvidence(grid), LiveEvidence(grid))

    def merge(self, delta: LiveEvidence, settings: ControlSettings) -> bool:
        """Add a replica's new items; returns whether the evidence restarted from the recent ones."""
        self.recent.merge(delta)
        restarted = False
        if self.recent.items >= settings.drift_items:
            restarted = self.evidence.items > 0 and self.evidence.drift(self.recent) > settings.drift_z
            if restarted:
                self.evidence = self.recent
            else:
                self.evidence.merge(self.recent)
            self.recent = LiveEvidence(self.evidence.grid)
        self.evidence.age(settings.window_items)
        return restarted

    def current(self) -> LiveEvidence:
        """All the evidence in force: the checked evidence and the recent items."""
        current = LiveEvidence(self.evidence.grid)
        current.merge(self.evidence)
        current.merge(self.recent)
        return current

    def to_dict(self) -> dict:
        return {"evidence": self.evidence.to_dict(), "recent": self.recent.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DriftingEvidence:
        return cls(LiveEvidence.from_dict(d["evidence"]), LiveEvidence.from_dict(d["recent"]))


@dataclass
class LiveOutcomes:
    """Outcome feedback per confidence bin (``LiveEvidence``'s bins): items whose true label is
    known and how many of them the student got wrong; of those the teacher also labelled
    (escalated and audited items), how many the student, the teacher, and exactly one of the
    two got wrong. Within a bin, feedback is taken as a sample of the bin's items."""

    grid: np.ndarray
    items: np.ndarray
    student_wrong: np.ndarray
    paired: np.ndarray
    paired_student_wrong: np.ndarray
    paired_teacher_wrong: np.ndarray
    one_wrong: np.ndarray

    @classmethod
    def from_items(cls, grid: np.ndarray, scores: np.ndarray, student_wrong: np.ndarray,
                   teacher_wrong: np.ndarray) -> LiveOutcomes:
        """Bin items with feedback by the student's confidence; ``teacher_wrong`` is NaN where the
        teacher did not label the item."""
        grid = np.asarray(grid, dtype=float)
        bins = np.searchsorted(grid, np.asarray(scores, dtype=float), side="right")
        student_wrong = np.asarray(student_wrong, dtype=bool)
        teacher_wrong = np.asarray(teacher_wrong, dtype=float)
        paired = ~np.isnan(teacher_wrong)
        teacher_wrong = np.nan_to_num(teacher_wrong).astype(bool)

        def count(mask: np.ndarray) -> np.ndarray:
            return np.bincount(bins[mask], minlength=len(grid) + 1).astype(float)

        return cls(grid, count(np.ones(len(bins), bool)), count(student_wrong), count(paired),
                   count(paired & student_wrong), count(paired & teacher_wrong), count(paired & (student_wrong != teacher_wrong)))

    @property
    def total(self) -> float:
        return float(self.items.sum())

    def served_accuracy(self, routed: np.ndarray, alpha: float, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        """Per grid threshold, the served accuracy on the routed items and its lower bound:
        escalated bins at the teacher's rate of errors, the rest at the student's, each bin's
        rate from its own feedback (a bin without any takes its model's pooled rate)."""
        estimate, variance = np.zeros(len(self.grid)), np.zeros(len(self.grid))
        for n, k, part in ((self.paired, self.paired_teacher_wrong, _below), (self.items, self.student_wrong, _above)):
            pooled = (k.sum() + 0.5) / (n.sum() + 1.0)
            rate = np.divide(k, n, out=np.full_like(n, pooled), where=n > 0)
            shrunk = (k + 2.0 * pooled) / (n + 2.0)  # for the variance: a bin whose few items were all right is not certain
            per_bin = np.divide(routed**2 * shrunk * (1 - shrunk), n, out=np.zeros_like(n), where=n > 0)
            unknown = part(np.where(n > 0, 0.0, routed))
            estimate += part(routed * rate)
            variance += part(per_bin) + unknown**2 * pooled * (1 - pooled) / max(float(n.sum()), 1.0)
        total = max(float(routed.sum()), 1e-12)
        return 1.0 - estimate / total, 1.0 - np.minimum(estimate + _sum_radius(variance, total, alpha, horizon), total) / total

    def over_teacher(self, routed: np.ndarray, alpha: float, horizon: float) -> tuple[float, np.ndarray, np.ndarray]:
        """The teacher's own accuracy on the routed items, and per grid threshold the served
        accuracy as that plus the served answers' lead over the teacher's (exactly 0 where
        everything is escalated), with the lead's lower bound; from the items both labelled."""
        n = self.paired
        pooled_teacher = (self.paired_teacher_wrong.sum() + 0.5) / (n.sum() + 1.0)
        teacher_rate = np.divide(self.paired_teacher_wrong, n, out=np.full_like(n, pooled_teacher), where=n > 0)
        total = max(float(routed.sum()), 1e-12)
        teacher = 1.0 - float((routed * teacher_rate).sum()) / total
        # per item, lead = [student right] - [teacher right] = teacher wrong - student wrong
        lead_sum, squares = self.paired_teacher_wrong - self.paired_student_wrong, self.one_wrong
        pooled_lead = lead_sum.sum() / max(float(n.sum()), 1.0)
        pooled_square = (squares.sum() + 0.5) / (n.sum() + 1.0)  # kept off 0: all-agreeing feedback is not certainty
        lead = np.divide(lead_sum, n, out=np.full_like(n, min(pooled_lead, 0.0)), where=n > 0)  # no feedback: no lead
        square = (squares + 2.0 * pooled_square) / (n + 2.0)
        per_bin = np.divide(routed**2 * np.maximum(square - lead**2, 0.0), n, out=np.zeros_like(n), where=n > 0)
        unknown = _above(np.where(n > 0, 0.0, routed))
        variance = _above(per_bin) + unknown**2 * max(pooled_square - pooled_lead**2, 0.0) / max(float(n.sum()), 1.0)
        gain = _above(routed * lead) / total
        return teacher, teacher + gain, teacher + gain - _sum_radius(variance, total, alpha, horizon) / total


def _sum_radius(variance: np.ndarray, total: float, alpha: float, horizon: float) -> np.ndarray:
    """The confidence-sequence radius of a sum over ``total`` items whose variance is ``variance``;
    0 where the variance is 0, a sum known exactly (nothing above a threshold is answered)."""
    variance = np.asarray(variance, dtype=float)
    return np.where(variance > 0, total * cs_radius(total, variance / total, alpha, horizon), 0.0)


@dataclass(frozen=True)
class ControlSettings:
    """How the controller moves."""

    alpha: float = 0.05  # the chance, over every look at once, that a certified threshold misses the goal
    horizon: float = 1_000  # items at which the confidence sequence is tuned to be narrowest (valid at any number; tests/benchmarks/control_validity.py)
    max_step: int = 10  # grid steps per update down, while the evidence above the destination is thin
    hysteresis: float = 0.002  # a cheaper threshold must clear the goal by this much
    # known items above a threshold before the controller moves down to it directly: coming down
    # from the top by bounded steps, the bins about to be answered by the student were all known
    # for longer, and a lucky first few hundred items cannot take it straight to a threshold
    # that the audits alone (2 %) would take a long time to correct
    min_known: int = 500
    window_items: float = 200_000  # evidence halves past this many routed items (a drift restarts it sooner: drift_items)
    # items of the student with a true label before an accuracy goal is held through live
    # accuracy instead of through the validated agreement
    min_feedback: int = 200
    # a drift check every this many items: when they disagree with the teacher more than the
    # evidence predicts by drift_z standard deviations, the evidence restarts from them
    drift_items: int = 2_000
    drift_z: float = 4.0


@dataclass(frozen=True)
class ControlStep:
    """One control step's result: where the controller stands after it, and what it measured there."""

    index: int  # the live threshold is grid[index]
    threshold: float
    estimate: float | None  # served agreement or accuracy (see ``through``), or teacher share (budget goals), at it
    bound: float | None  # its one-sided bound: lower for agreement and accuracy, the share itself for budget
    target: float
    held: bool  # the goal holds at the live threshold, with its bound
    budget_limited: bool  # the goal needs more teacher than routing.teacher_budget allows
    through: str = "agreement"  # what the goal is held through: "agreement", "accuracy" (feedback) or "share"


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
                 validation: dict[str, float] | None = None, settings: ControlSettings = ControlSettings(),
                 floor: int = 0, outcomes: LiveOutcomes | None = None) -> ControlStep:
    """One move of the live threshold; for agreement and accuracy goals never below
    ``grid[floor]`` unless the budget forces it; ``outcomes``: the student's outcome feedback,
    which accuracy goals are held through once it holds ``min_feedback`` items (see the module
    docstring)."""
    grid = evidence.grid
    for name, value in (("index", index), ("floor", floor)):
        if not 0 <= value < len(grid):
            raise RouterError(f"{name} must lie in [0, {len(grid)}); got {value}")
    share = evidence.teacher_share()
    allowed = share <= teacher_budget + 1e-12
    highest_allowed = int(np.flatnonzero(allowed).max()) if allowed.any() else 0
    position = np.arange(len(grid))

    if isinstance(goal, TeacherBudget):  # the share is counted on every item: no bound, and straight to it
        target = goal.max_share
        fits = share <= min(target, teacher_budget) + 1e-12
        if fits[index]:  # up (more teacher) only to a threshold whose share stays under target - hysteresis
            margin = share <= min(target - settings.hysteresis, teacher_budget) + 1e-12
            new = max(index, int(np.flatnonzero(margin).max()) if margin.any() else 0)
        else:
            new = int(np.flatnonzero(fits).max()) if fits.any() else 0
        return ControlStep(new, float(grid[new]), float(share[new]), float(share[new]), target,
                            bool(share[new] <= target + 1e-12), bool(target > teacher_budget), "share")

    through = "agreement"
    if isinstance(goal, TargetAccuracy) and outcomes is not None and outcomes.total >= settings.min_feedback:
        if not np.array_equal(outcomes.grid, grid):
            raise RouterError("outcomes and evidence must be kept on the same threshold grid")
        through, known_above = "accuracy", _above(outcomes.items)
        if goal.value is None:
            target, estimate, lower = outcomes.over_teacher(evidence.routed, settings.alpha, settings.horizon)
        else:
            target = goal.value
            estimate, lower = outcomes.served_accuracy(evidence.routed, settings.alpha, settings.horizon)
    else:
        target = agreement_target(goal, validation)
        estimate, lower = evidence.agreement(settings.alpha, settings.horizon)
        known_above = _above(evidence.known)
    usable = allowed & (position >= min(floor, highest_allowed))
    if through == "accuracy":
        # a lead over the teacher is exactly 0 at the top and about 0 just below it, so testing
        # from the top down would stop at once: the cheapest threshold whose bound holds it
        meets = usable & (lower >= target)
        certified = int(np.flatnonzero(meets).min()) if meets.any() else highest_allowed
        holds_here = bool(meets[index])
        if not holds_here:  # more teacher is not always more accurate: the nearest above, else below, that holds it
            above, below = np.flatnonzero(meets & (position > index)), np.flatnonzero(meets & (position < index))
            certified = int(above.min()) if above.size else int(below.max()) if below.size else highest_allowed
    else:  # fixed-sequence testing from the safe end of what the budget allows down (router.certify)
        certified = fixed_sequence(lower[: highest_allowed + 1], target, usable[: highest_allowed + 1])
        holds_here = certified <= index <= highest_allowed and bool(usable[highest_allowed] and lower[highest_allowed] >= target)
    if not holds_here:
        new = certified  # the current threshold is not certified (or past the budget): straight to the cheapest that is
    else:  # certified: down to the cheapest certified one that clears the goal by the hysteresis, by max_step while the evidence is thin
        clears = np.flatnonzero((lower >= target + settings.hysteresis) & usable & (position >= certified) & (position < index))
        new = index
        if clears.size:
            new = int(clears.min())
            if known_above[new] < settings.min_known:
                near = clears[clears >= index - settings.max_step]
                new = int(near.min()) if near.size else index
    budget_limited = bool((lower >= target).any() and not (allowed & (lower >= target)).any())  # only thresholds past the budget hold it
    return ControlStep(new, float(grid[new]), float(estimate[new]), float(lower[new]), float(target),
                        bool(lower[new] >= target and allowed[new]), budget_limited, through)


def certified_start(evidence: LiveEvidence, goal: Goal, teacher_budget: float = 1.0, validation: dict[str, float] | None = None,
                    settings: ControlSettings = ControlSettings(), floor: int = 0) -> ControlStep:
    """Where control settles on ``evidence`` alone, from the top: the steps of ``control_step``
    until the threshold stops moving (evidence gathered beforehand, a shadow's or a bulk job's
    sample, is certified as a whole rather than stepped through as it arrived)."""
    step = control_step(evidence, len(evidence.grid) - 1, goal, teacher_budget, validation, settings, floor)
    for _ in evidence.grid:
        again = control_step(evidence, step.index, goal, teacher_budget, validation, settings, floor)
        if again.index == step.index:
            break
        step = again
    return step
