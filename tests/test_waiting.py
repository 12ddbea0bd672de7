"""``wait_until`` (tests/waiting.py), the bounded wait the Ray tests use instead of fixed sleeps."""

from __future__ import annotations

import time

import pytest

from waiting import wait_until


def test_returns_the_first_true_value_as_soon_as_it_holds():
    calls = []

    def third_time() -> str | None:
        calls.append(1)
        return "ready" if len(calls) == 3 else None

    started = time.monotonic()
    assert wait_until(third_time, 10, "the third call", every_s=0.01) == "ready"
    assert len(calls) == 3 and time.monotonic() - started < 5


def test_fails_with_what_was_awaited_once_the_bound_passes():
    calls = []
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the moon"):
        wait_until(lambda: calls.append(1), 0.2, "the moon", every_s=0.05)
    assert 0.2 <= time.monotonic() - started < 5
    assert len(calls) >= 2, "polled, and called once more at the deadline"


def test_an_error_in_the_predicate_fails_at_once():
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0, 60, "nothing")
