"""Audit sampling: send a random share of confident items to the teacher too, and estimate agreement
(with its Wilson interval, ``wilson_interval``, which live accuracy by tier reports too)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from router._checks import check_fraction
from router.errors import RouterError


class AuditSampler:
    """Chooses each confident item for audit independently: with probability `rate`, or with
    the probability an ``allocation`` gives its confidence (audits where the doubt is,
    ``router.certify.allocate_audits``; None from it: `rate`). Each item's probability is known,
    so estimates can weigh audited items by its inverse.

    >>> AuditSampler(rate=0.0).sample(3)
    array([False, False, False])
    >>> AuditSampler(0.02, allocation=lambda c: np.where(c < 0.8, 0.05, 0.01)).probabilities(np.array([0.7, 0.9]))
    array([0.05, 0.01])
    """

    def __init__(self, rate: float, seed: int | None = None,
                 allocation: Callable[[np.ndarray], np.ndarray | None] | None = None) -> None:
        """Set the audit rate; a fixed `seed` makes the draws reproducible."""
        self.rate = check_fraction(rate, "audit rate")
        self.allocation = allocation
        self._rng = np.random.default_rng(seed)

    def probabilities(self, confidence: np.ndarray) -> np.ndarray:
        """Each item's chance of an audit, by its confidence."""
        allocated = self.allocation(confidence) if self.allocation is not None else None
        return np.full(len(confidence), self.rate) if allocated is None else np.asarray(allocated, dtype=float)

    def sample(self, n: int, probabilities: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of length `n`: True for the items to audit (each with its probability, else `rate`)."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise RouterError(f"n must be an int >= 0; got {n!r}")
        return self._rng.random(n) < (self.rate if probabilities is None else probabilities)


class AgreementEstimate:
    """Running estimate of how often the student agrees with the teacher on audited items."""

    def __init__(self) -> None:
        """Start with no audited items."""
        self.audited = 0  # audited items seen
        self.agreed = 0  # of those, items where student and teacher agreed

    def update(self, agree: np.ndarray) -> None:
        """Add audited items; `agree` is a boolean array, True where student and teacher agreed."""
        agree = np.asarray(agree, dtype=bool).ravel()
        self.audited += int(agree.size)
        self.agreed += int(agree.sum())

    @property
    def value(self) -> float | None:
        """Observed agreement rate, or None before any audited item."""
        return self.agreed / self.audited if self.audited else None

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval for the agreement rate (``wilson_interval``); (0, 1) before any item."""
        return wilson_interval(self.agreed, self.audited, z)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of the rate ``successes / n`` (``z`` = 1.96: 95 %), clipped to
    [0, 1]; (0, 1) for ``n`` = 0: no evidence rules any rate out. Audit agreement and live
    accuracy by tier (``/v1/stats``) both report it.

    >>> [round(bound, 4) for bound in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if not 0 <= successes <= n:
        raise RouterError(f"a Wilson interval needs 0 <= successes <= n; got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
