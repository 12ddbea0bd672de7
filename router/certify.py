"""A threshold whose guarantee survives choosing it and looking again: the statistics behind
online control, shadow evidence and bulk certification.

- ``cs_radius``: the radius of a one-sided asymptotic confidence sequence for a mean
  (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
  asymptotic confidence sequences", Annals of Statistics 2024, the one-sided normal-mixture
  boundary). Unlike a fixed ``z`` interval it holds at every look at once: a controller that
  re-tests every few hundred items keeps its error rate at ``alpha`` however often it looks.
- ``fixed_sequence``: Learn-then-Test's fixed-sequence testing over a monotone grid (Angelopoulos,
  Bates, Candès, Jordan and Lei, 2021): thresholds are tested from the safe end (everything to
  the teacher) towards the cheap end, and certification stops at the first that fails. Only
  the first threshold whose goal truly fails can let a wrong one through, so choosing among the
  whole grid costs no multiplicity correction.
- ``allocate_audits``: per-bin audit probabilities under the same average rate, more where the
  student disagrees with the teacher (near the threshold), never zero anywhere (Neyman
  allocation for an inverse-probability-weighted sum: q_b proportional to the square root of
  bin b's disagreement rate; active statistical inference, Zrnic and Candès 2024).

Together: served agreement at threshold ``t`` is estimated from per-item values
``Z_i = [item above t] * [label known] * disagreed_i / p_i`` with ``p_i`` the known chance that
item's teacher label was seen (1 when escalated, its audit probability otherwise), whose mean
is the rate of served disagreements whatever the audit allocation was at the time; its upper
confidence sequence gives the agreement's lower bound at every threshold, and fixed-sequence
testing over those bounds certifies the cheapest threshold that holds the goal.

>>> round(cs_radius(n=10_000, variance=1.0, alpha=0.05, horizon=10_000) * 100, 3)  # a single look's is 1.645 / 100
2.778
>>> fixed_sequence(np.array([0.95, 0.975, 0.98, 0.99, 1.0]), target=0.97)
1
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from router.errors import RouterError


@lru_cache(maxsize=64)
def _mixture_scale(alpha: float) -> float:
    """The ``c`` = n * sigma^2 * rho^2 at which the boundary is narrowest (found once per alpha)."""
    grid = np.linspace(0.1, 50.0, 5000)
    width = (grid + 1) / grid * np.log(1 + np.sqrt(grid + 1) / (2 * alpha))
    return float(grid[int(width.argmin())])


def cs_radius(n: float, variance: float | np.ndarray, alpha: float, horizon: float) -> float | np.ndarray:
    """Radius of a one-sided (1 - ``alpha``) asymptotic confidence sequence for a mean of ``n``
    values with (estimated) ``variance`` each (one per candidate threshold, as an array):
    ``mean + radius`` bounds the true mean from above at every ``n`` at once. The boundary is
    tuned to be narrowest at ``horizon`` values of unit variance; it is valid at every ``n``,
    only wider away from there."""
    if not 0 < alpha < 1 or horizon <= 0:
        raise RouterError(f"alpha must lie in (0, 1) and horizon be > 0; got {alpha}, {horizon}")
    if n <= 0:
        radius = np.full(np.shape(variance), math.inf)
    else:
        rho2 = _mixture_scale(alpha) / horizon
        spread = n * np.maximum(variance, 0.0) * rho2 + 1.0
        radius = np.sqrt(2.0 * spread / (n * n * rho2) * np.log(1.0 + np.sqrt(spread) / (2.0 * alpha)))
    return float(radius) if np.ndim(radius) == 0 else radius


def fixed_sequence(lower: np.ndarray, target: float, usable: np.ndarray | None = None) -> int:
    """The cheapest grid index certified by fixed-sequence testing: from the top (the last
    index, the safe end) down, each threshold passes when its ``lower`` bound meets ``target``
    (and it is ``usable``: within the budget, above a floor); the first that fails ends the
    sequence. The top itself is returned when it fails: it is where nothing cheaper is shown."""
    lower = np.asarray(lower, dtype=float)
    passes = lower >= target
    if usable is not None:
        passes &= np.asarray(usable, dtype=bool)
    top = len(lower) - 1
    failing = np.flatnonzero(~passes)
    if not passes[top]:
        return top
    return int(failing.max()) + 1 if failing.size else 0


def allocate_audits(rate: float, routed: np.ndarray, disagreement: np.ndarray, floor_share: float = 0.25) -> np.ndarray:
    """Per-bin audit probabilities for the confident bins, whose routed-weighted mean is
    ``rate``: proportional to the square root of each bin's disagreement rate (Neyman
    allocation for the inverse-probability-weighted count of disagreements), never under
    ``floor_share * rate`` (a bin that drifts is still seen) and never over 1.

    >>> q = allocate_audits(0.02, np.array([100.0, 100.0]), np.array([0.16, 0.01]))
    >>> [round(float(x), 4) for x in q], round(float((q * 100).sum() / 200), 4)
    ([0.032, 0.008], 0.02)
    """
    routed = np.asarray(routed, dtype=float)
    if not 0 <= rate <= 1:
        raise RouterError(f"audit rate must lie in [0, 1]; got {rate}")
    if rate == 0 or routed.sum() <= 0:
        return np.full(len(routed), float(rate))
    floor = min(rate, max(floor_share, 0.0) * rate)
    want = np.sqrt(np.clip(np.asarray(disagreement, dtype=float), 0.0, 1.0))
    if want.sum() <= 0:
        return np.full(len(routed), float(rate))
    budget = rate * routed.sum()
    # water-filling: scale the free bins so that the routed-weighted sum meets the budget
    q = np.full(len(routed), floor)
    free = np.ones(len(routed), bool)
    for _ in range(len(routed) + 1):
        fixed = (~free * q * routed).sum()
        scale_base = (want * routed)[free].sum()
        if scale_base <= 0:
            break
        scale = (budget - fixed) / scale_base
        q[free] = want[free] * scale
        low, high = free & (q < floor), free & (q > 1.0)
        if not (low.any() or high.any()):
            break
        q[low], q[high] = floor, 1.0
        free &= ~(low | high)
    return np.clip(q, floor, 1.0)
