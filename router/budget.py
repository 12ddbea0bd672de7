"""A sliding-window cap on the share of items the teacher answers."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from router.errors import RouterError


class TeacherRateLimiter:
    """Caps the teacher's share of the items seen over the last `window_s` seconds.

    Rule: with `items` the items seen in the window including this request, the teacher may hold
    at most max(floor(max_share * items), min_items) of them. The `min_items` floor keeps a cold
    start or a quiet service from being starved: while fewer than `min_items` items are in the
    window every unsure item is admitted, and past that the teacher may always take `min_items`
    per window. Counts are kept in one-second buckets, so the window is between
    `window_s` and `window_s + 1` seconds long; each call costs O(1) amortised.
    With `max_share >= 1` the rule admits every item, so the cap is off. Thread-safe.

    >>> limiter = TeacherRateLimiter(max_share=0.1, min_items=0)
    >>> limiter.admit(n_unsure=5, n_total=20)
    2
    """

    def __init__(self, max_share: float, window_s: float = 60.0, min_items: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Set the cap; `clock` returns seconds and is injectable for tests."""
        if not isinstance(max_share, (int, float)) or not (math.isfinite(max_share) and max_share >= 0):
            raise RouterError(f"max_share must be a finite number >= 0; got {max_share!r}")
        if not isinstance(window_s, (int, float)) or not (math.isfinite(window_s) and window_s > 0):
            raise RouterError(f"window_s must be a finite number > 0; got {window_s!r}")
        if not isinstance(min_items, int) or min_items < 0:
            raise RouterError(f"min_items must be an int >= 0; got {min_items!r}")
        self.max_share = float(max_share)
        self.window_s = float(window_s)
        self.min_items = min_items
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, items, teacher items], oldest first
        self._items = 0
        self._teacher = 0
        self._lock = threading.Lock()

    def admit(self, n_unsure: int, n_total: int, force: bool = False) -> int:
        """How many of this request's `n_unsure` items may go to the teacher (out of `n_total` items).

        Records the request's items and the admitted teacher items in the window. With `force`
        (an admin's request) every item is admitted, and still counted.
        """
        if not 0 <= n_unsure <= n_total:
            raise RouterError(f"need 0 <= n_unsure <= n_total; got n_unsure={n_unsure}, n_total={n_total}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            items = self._items + n_total
            # The epsilon keeps float error (0.29 * 100 = 28.999999999999996) from lowering the floor.
            allowance = max(math.floor(self.max_share * items + 1e-9), self.min_items)
            admitted = n_unsure if force else max(0, min(n_unsure, allowance - self._teacher))
            self._record(math.floor(now), n_total, admitted)
            return admitted

    def _expire(self, now: float) -> None:
        """Drop the buckets that lie wholly before the window."""
        while self._buckets and self._buckets[0][0] + 1 <= now - self.window_s:
            _, items, teacher = self._buckets.popleft()
            self._items -= items
            self._teacher -= teacher

    def _record(self, second: int, items: int, teacher: int) -> None:
        """Add counts to the bucket of `second`."""
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        self._buckets[-1][1] += items
        self._buckets[-1][2] += teacher
        self._items += items
        self._teacher += teacher
