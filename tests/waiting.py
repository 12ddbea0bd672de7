"""Waiting for a condition in a test (importable from every test directory, as ``ports``).

A fixed ``time.sleep`` before an assertion is either too short on a loaded CI machine (the test
fails, and passes when run again) or longer than needed everywhere else. ``wait_until`` polls
the condition instead, returns as soon as it holds, and fails with what was awaited once a
bound passes."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.1) -> T:
    """Call ``predicate`` every ``every_s`` seconds until it returns something true, and return
    that; AssertionError naming ``what`` when ``timeout_s`` passes first. The predicate is always
    called at least once, and once more at the deadline, so a slow predicate is not cut short.
    An exception the predicate raises is not caught: it fails the wait at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(min(every_s, max(0.0, deadline - time.monotonic())))
