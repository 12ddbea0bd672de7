"""The one-sided exact sign test of two models compared on the same items: the gate
(``distill.gate``) rejects a candidate worse on held-out feedback with it, and the training set
(``distill.refresh_data``) distrusts a teacher label the feedback shows wrong with it.
"""

from __future__ import annotations

import math


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact sign test: the chance of at least ``worse`` losses among ``worse + better``
    items where two models differ, were neither better (1.0 when they never differ)."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n if n else 1.0
