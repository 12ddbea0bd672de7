"""TeacherRateLimiter under bursts, window expiry and threads, with a fake clock."""

import math
import threading

import numpy as np
import pytest

from router import RouterError, TeacherRateLimiter


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def _cap(share, items, min_items):
    """The documented most the teacher may hold among `items` window items."""
    return max(math.floor(share * items + 1e-9), min_items)


def test_a_burst_of_unsure_requests_keeps_the_teacher_share_capped():
    rng = np.random.default_rng(0)
    limiter = TeacherRateLimiter(max_share=0.1, window_s=60.0, min_items=20, clock=FakeClock())
    items = teacher = 0
    for n in rng.integers(1, 6, size=1000):
        admitted = limiter.admit(n_unsure=int(n), n_total=int(n))
        assert 0 <= admitted <= n
        items, teacher = items + n, teacher + admitted
        assert teacher <= _cap(0.1, items, 20)
    assert teacher / items <= 0.1 + 20 / items
    assert teacher == _cap(0.1, items, 20)  # the budget is used, not only respected


def test_cold_start_is_not_starved():
    limiter = TeacherRateLimiter(max_share=0.1, min_items=20, clock=FakeClock())
    assert [limiter.admit(1, 1) for _ in range(20)] == [1] * 20
    assert limiter.admit(1, 1) == 0  # 21 items: the cap is max(2, 20) and 20 are taken


def test_a_large_first_request_gets_its_share_only():
    limiter = TeacherRateLimiter(max_share=0.1, min_items=20, clock=FakeClock())
    assert limiter.admit(1000, 1000) == 100


def test_admits_again_after_the_window_passes():
    clock = FakeClock()
    limiter = TeacherRateLimiter(max_share=0.1, window_s=60.0, min_items=20, clock=clock)
    for _ in range(100):
        limiter.admit(10, 10)
    assert limiter.admit(10, 10) == 1  # 1010 items: cap 101, 100 taken
    clock.now += 62.0
    assert limiter.admit(10, 10) == 10


def test_only_buckets_wholly_outside_the_window_expire():
    clock = FakeClock(0.0)
    limiter = TeacherRateLimiter(max_share=0.5, window_s=10.0, min_items=0, clock=clock)
    assert limiter.admit(0, 10) == 0  # second 0: 10 items, no teacher
    clock.now = 5.0
    assert limiter.admit(10, 10) == 10  # 20 items: cap 10
    clock.now = 6.0
    assert limiter.admit(2, 10) == 2  # 30 items: cap 15, 10 taken
    clock.now = 11.5
    assert limiter.admit(10, 10) == 3  # second 0 expired: 30 items, cap 15, 12 taken (8 if it had not)
    clock.now = 16.5
    assert limiter.admit(10, 10) == 10  # second 5 expired: 30 items, cap 15, 5 taken (7 if 6 had too)


def test_a_window_that_shrank_below_its_share_admits_nothing():
    clock = FakeClock(0.0)
    limiter = TeacherRateLimiter(max_share=0.5, window_s=10.0, min_items=0, clock=clock)
    limiter.admit(0, 10)
    clock.now = 5.0
    assert limiter.admit(10, 10) == 10
    clock.now = 11.5  # the teacher-free second 0 expires: 10 of 12 items are the teacher's, cap 6
    assert limiter.admit(2, 2) == 0


def test_max_share_of_one_disables_the_cap():
    limiter = TeacherRateLimiter(max_share=1.0, min_items=0, clock=FakeClock())
    assert all(limiter.admit(7, 7) == 7 for _ in range(100))


def test_threads_share_one_consistent_budget():
    limiter = TeacherRateLimiter(max_share=0.1, min_items=20, clock=FakeClock())
    admitted = []

    def worker():
        admitted.append(sum(limiter.admit(1, 1) for _ in range(250)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 8
    assert sum(admitted) == _cap(0.1, 2000, 20)


@pytest.mark.parametrize("kwargs", [{"max_share": -0.1}, {"max_share": 0.1, "window_s": 0},
                                    {"max_share": 0.1, "min_items": -1}])
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(RouterError):
        TeacherRateLimiter(**kwargs)


def test_more_unsure_than_total_is_rejected():
    with pytest.raises(RouterError, match="n_unsure"):
        TeacherRateLimiter(max_share=0.1).admit(3, 2)
