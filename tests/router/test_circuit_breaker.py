"""CircuitBreaker state machine with a fake clock."""

import threading

import pytest

from router import CircuitBreaker, RouterError


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _breaker(clock, threshold=3, timeout=10.0):
    return CircuitBreaker(failure_threshold=threshold, reset_timeout_s=timeout, clock=clock)


def _open(breaker, failures=3):
    for _ in range(failures):
        breaker.record_failure()
    assert breaker.state == "open"


def test_opens_after_n_consecutive_failures():
    breaker = _breaker(FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_after_the_timeout_lets_one_probe_through_then_closes_on_success():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    assert breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))


def test_a_failed_probe_reopens_for_another_timeout():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 19.9
    assert not breaker.allow()
    clock.now = 20.0
    assert breaker.allow() and breaker.state == "half_open"


def test_a_lost_probe_is_replaced_after_the_timeout():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.now = 10.0
    assert breaker.allow()
    clock.now = 19.0
    assert not breaker.allow()
    clock.now = 20.0
    assert breaker.allow()


def test_results_arriving_while_open_are_ignored():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    breaker.record_success()
    assert breaker.state == "open" and not breaker.allow()


def test_concurrent_callers_get_exactly_one_probe():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.now = 10.0
    results, barrier = [], threading.Barrier(16)

    def call():
        barrier.wait()
        results.append(breaker.allow())

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_timeout_s": -1.0}])
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(RouterError):
        CircuitBreaker(**kwargs)
