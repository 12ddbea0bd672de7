"""A circuit breaker that stops calling the teacher while it keeps failing."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Literal

from router.errors import RouterError

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open after `reset_timeout_s`.

    Closed: every call is allowed. Open: none is, until `reset_timeout_s` has passed since it
    opened; the next `allow()` then moves to half-open and lets one probe through. Half-open: one
    probe at a time; its success closes the breaker, its failure opens it again. A probe that never
    reports back is replaced by another after `reset_timeout_s`, so the breaker cannot stick.
    Results recorded while open (from calls started before it opened) are ignored. Thread-safe.

    >>> breaker = CircuitBreaker(failure_threshold=1)
    >>> breaker.record_failure(); breaker.allow()
    False
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Set the thresholds; `clock` returns seconds and is injectable for tests."""
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise RouterError(f"failure_threshold must be an int >= 1; got {failure_threshold!r}")
        if not isinstance(reset_timeout_s, (int, float)) or not (
            math.isfinite(reset_timeout_s) and reset_timeout_s >= 0
        ):
            raise RouterError(f"reset_timeout_s must be a finite number >= 0; got {reset_timeout_s!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = float(reset_timeout_s)
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive failures while closed
        self._opened_at = 0.0
        self._probe_since: float | None = None  # start of the half-open probe in flight
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        """Current state; open turns into half_open at the first allow() after the timeout."""
        return self._state

    def allow(self) -> bool:
        """Whether a call to the teacher may go ahead now."""
        with self._lock:
            now = self._clock()
            if self._state == "closed":
                return True
            if self._state == "open":
                if now - self._opened_at < self.reset_timeout_s:
                    return False
                self._state = "half_open"
            if self._probe_since is not None and now - self._probe_since < self.reset_timeout_s:
                return False
            self._probe_since = now
            return True

    def record_success(self) -> None:
        """Report a successful call: resets the failure count, and closes a half-open breaker."""
        with self._lock:
            if self._state != "open":
                self._state, self._failures, self._probe_since = "closed", 0, None

    def record_failure(self) -> None:
        """Report a failed call (error or timeout): may open the breaker."""
        with self._lock:
            if self._state == "half_open":
                self._open()
            elif self._state == "closed":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open()

    def _open(self) -> None:
        """Move to open now; the caller holds the lock."""
        self._state, self._opened_at, self._probe_since, self._failures = "open", self._clock(), None, 0
