"""A ``LogTail`` that follows a log remembers the ids of its last ``window`` records only, so its
memory does not grow with the records it reads, and still drops the copies a replay writes: a
retried write at the head of a new writer's segment, read in the same pass or a later one. A
whole read (``read_records``) drops every copy, however late."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from distill.escalations import DEDUP_WINDOW, EscalationRecord, LogTail, read_records
from serving.segments import SegmentWriter


def records(prefix: str, n: int) -> list[EscalationRecord]:
    return [EscalationRecord(id=f"{prefix}-{i}", request_id="r", text="t", reason="unsure", student_label="a", teacher_label="b",
                             student_probs=[0.6, 0.4], teacher_probs=[0.2, 0.8], student_version="s1", teacher_version="t1")
            for i in range(n)]


def new_writer(directory: Path, max_bytes: int = 1 << 20) -> SegmentWriter:
    """A writer of its own segments, as a new process is (segment names differ by their time)."""
    time.sleep(0.002)
    return SegmentWriter(directory, max_bytes=max_bytes)


def test_the_ids_remembered_do_not_grow_with_the_records_read(tmp_path):
    writer = new_writer(tmp_path, max_bytes=4096)  # many segments
    tail = LogTail(tmp_path, window=100)
    read = []
    for poll in range(10):
        writer.append(records(f"p{poll}", 150))
        read += [r.id for r in tail.new_records()]
        assert len(tail._seen) == len(tail._order) == min(len(read), 100)
    assert len(read) == len(set(read)) == 1500
    assert LogTail(tmp_path).window == DEDUP_WINDOW


@pytest.mark.parametrize("same_pass", [True, False])
def test_a_retried_write_in_a_new_writers_segment_is_dropped(tmp_path, same_pass):
    first = new_writer(tmp_path)
    first.append(records("a", 20))
    in_flight = records("b", 8)
    first.append(in_flight)  # written, but its writer is killed before the client hears of it
    tail = LogTail(tmp_path, window=50)
    read = [] if same_pass else [r.id for r in tail.new_records()]
    second = new_writer(tmp_path)
    second.append(in_flight)  # the client retries through the restarted writer
    second.append(records("c", 30))
    read += [r.id for r in tail.new_records()]
    assert len(list(tmp_path.glob("segment-*.jsonl"))) == 2
    assert sorted(read) == sorted([f"a-{i}" for i in range(20)] + [f"b-{i}" for i in range(8)] + [f"c-{i}" for i in range(30)])


def test_a_copy_past_the_window_is_read_again_but_not_by_a_whole_read(tmp_path):
    """What the window changes, pinned: a copy more than ``window`` records after its original."""
    new_writer(tmp_path).append(records("x", 5) + records("a", 1))
    new_writer(tmp_path).append(records("b", 10) + records("a", 1))  # 10 records between the original and its copy
    assert [r.id for r in LogTail(tmp_path, window=11).new_records()].count("a-0") == 1
    assert [r.id for r in LogTail(tmp_path, window=10).new_records()].count("a-0") == 2
    assert [r.id for r in read_records(tmp_path)].count("a-0") == 1


def test_a_window_is_a_positive_number_of_ids(tmp_path):
    with pytest.raises(ValueError, match="window"):
        LogTail(tmp_path, window=0)
