"""A separate process that writes escalation records through ``SegmentWriter`` and prints each
acknowledged id (one line each, after its batch is fsynced), for the kill -9 test.

    python log_crash_writer.py DIRECTORY PREFIX BATCHES BATCH_SIZE [RETRY_ID ...]

Record ids are ``PREFIX-<n>``, so the parent knows which ids a killed batch held; RETRY_IDs
are written first again, as a client retrying unacknowledged records would."""

from __future__ import annotations

import sys
from pathlib import Path

from distill.escalations import EscalationRecord
from serving.segments import SegmentWriter

TEXT_BYTES = 256 * 1024  # large records make a kill inside a write, and so a torn line, likely


def record(record_id: str) -> EscalationRecord:
    return EscalationRecord(
        id=record_id, request_id="crash-test", text=record_id.ljust(TEXT_BYTES, "x"), reason="unsure",
        student_label="a", teacher_label="b", student_probs=[0.6, 0.4], teacher_probs=[0.2, 0.8],
        student_version="s1", teacher_version="t1",
    )


def main() -> None:
    directory, prefix, batches, batch_size, retry = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    writer = SegmentWriter(directory, max_bytes=4 * 1024 * 1024)
    plan = ([retry] if retry else []) + [[f"{prefix}-{b * batch_size + i}" for i in range(batch_size)] for b in range(batches)]
    for ids in plan:
        writer.append([record(i) for i in ids])
        sys.stdout.write("".join(f"{i}\n" for i in ids))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
