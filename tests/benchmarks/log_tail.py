"""What a ``LogTail`` that follows a log holds once it has read ``--records`` records: the ids
it remembers to drop copies. Before the window (``window=None``, what every tail did) it held
every id ever read; now the ids of the last ``DEDUP_WINDOW`` records. The records (32-hex ids,
as written) are in segments of 100,000 lines, read in one pass; each reads ``--records`` and
the figure is the memory still held by the tail after it (tracemalloc), and the read's time.

    python tests/benchmarks/log_tail.py [--records 1000000]
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from uuid import uuid4

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from distill.escalations import DEDUP_WINDOW, LogTail  # noqa: E402

SEGMENT_LINES = 100_000


class Line(BaseModel):
    """The fields a tail needs of a record: its id (a record's other fields are not kept)."""

    id: str


def write_log(directory: Path, records: int) -> None:
    directory.mkdir(parents=True)
    for start in range(0, records, SEGMENT_LINES):
        lines = "".join(f'{{"id": "{uuid4().hex}"}}\n' for _ in range(min(SEGMENT_LINES, records - start)))
        (directory / f"segment-{start // SEGMENT_LINES:08d}-1.jsonl").write_text(lines)


def held_after_reading(directory: Path, window: int | None) -> tuple[int, int, float]:
    """(bytes the tail holds after one pass, records yielded, seconds of the pass untraced)."""
    started = time.perf_counter()
    count = sum(1 for _ in LogTail(directory, Line, window=window).new_records())
    seconds = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tail = LogTail(directory, Line, window=window)
    assert sum(1 for _ in tail.new_records()) == count
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del tail
    return held, count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "log"
        write_log(directory, args.records)
        for name, window in (("before (every id)", None), (f"after (window {DEDUP_WINDOW:,})", DEDUP_WINDOW)):
            held, count, seconds = held_after_reading(directory, window)
            print(f"{name}: {count:,} records read in {seconds:.1f} s; the tail holds {held / 2**20:.1f} MiB "
                  f"({held / min(count, window or count):.0f} bytes per id remembered)")


if __name__ == "__main__":
    main()
