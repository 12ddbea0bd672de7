"""The admin's shared overrides (``serving.shared_state.SharedRouting``) between two replicas of
one cascade, on one file store, with a clock the test moves: a replica sees another's write once
``check_every_s`` has passed and not before, the writer at once, a fresh read at once; a
document that does not validate keeps the last good value. The HTTP test of the same promise
(tests/reliability/test_shared_routing_http.py) can only wait for it; this one pins the second."""

from __future__ import annotations

from serving.shared_state import ROUTING_DOCUMENT, SharedRouting
from serving.stores import SYNC_EVERY_S, FileStateStore


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replicas(tmp_path, clock: Clock) -> tuple[SharedRouting, SharedRouting]:
    store = FileStateStore(tmp_path)
    return SharedRouting(store, clock=clock), SharedRouting(store, clock=clock)


def test_another_replica_sees_a_write_once_a_check_is_due_and_not_before(tmp_path):
    clock = Clock()
    writer, reader = replicas(tmp_path, clock)
    assert reader.read().threshold is None  # read (and cached) before the write
    assert writer.write(threshold=0.4).threshold == 0.4
    assert writer.read().threshold == 0.4, "the replica that wrote it routes with it at once"
    clock.now += SYNC_EVERY_S - 0.01
    assert reader.read().threshold is None, "the other replica re-reads at most once per check_every_s"
    clock.now += 0.01
    assert reader.read().threshold == 0.4
    assert reader.check_every_s == SYNC_EVERY_S == 1.0


def test_a_fresh_read_does_not_wait_for_the_check(tmp_path):
    clock = Clock()
    writer, reader = replicas(tmp_path, clock)
    reader.read()
    writer.write(threshold=0.7)
    assert reader.read().threshold is None
    assert reader.read(fresh=True).threshold == 0.7
    writer.write(threshold=None)  # cleared: every replica back on the live or configured threshold
    assert reader.read().threshold == 0.7, "a fresh read restarts the wait for the next check"
    clock.now += SYNC_EVERY_S
    assert reader.read().threshold is None


def test_reload_requests_reach_the_other_replica_within_a_check(tmp_path):
    clock = Clock()
    writer, reader = replicas(tmp_path, clock)
    assert reader.read().reload_generation == 0
    assert writer.bump_reload() == 1 and writer.bump_reload() == 2  # two admins at once bump it twice
    assert reader.read().reload_generation == 0
    clock.now += SYNC_EVERY_S
    assert reader.read().reload_generation == 2


def test_a_document_that_does_not_validate_keeps_the_last_good_value(tmp_path):
    clock = Clock()
    writer, reader = replicas(tmp_path, clock)
    writer.write(threshold=0.5)
    assert reader.read(fresh=True).threshold == 0.5
    FileStateStore(tmp_path).update(ROUTING_DOCUMENT, lambda _: {"threshold": "half", "reload_generation": 3})
    clock.now += SYNC_EVERY_S
    assert reader.read().threshold == 0.5 and reader.read().reload_generation == 0
