"""What the feedback ledger costs an ingress replica as feedback grows: memory per item it holds,
and the time of one ``outcomes`` call (what a stepping replica reads per control step under an
accuracy goal, holding the GIL), for ``--items`` items of one student version. In one process,
without Ray or HTTP; records go in as a sync reads them from the feedback log.

    python tests/benchmarks/feedback_ledger.py [--items 1000000] [--text-chars 120]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from distill.feedback import FeedbackRecord  # noqa: E402
from serving.feedback import FeedbackLedger  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--text-chars", type=int, default=120, help="length of each item's text (default: 120)")
    args = parser.parse_args()
    text = ("x" * args.text_chars)
    ledger = FeedbackLedger(Path(tempfile.mkdtemp()) / "feedback")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.items):
        record = FeedbackRecord(request_id=f"{i:032x}", index=0, label="a" if i % 10 else "b", text=text, tier="student",
                                answered="a", student_label="a", teacher_label=None, student_version="student-v1",
                                teacher_version=None, confidence=(i % 1000) / 1000)
        ledger._apply(record)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        ledger.outcomes("student-v1")
        times.append(time.perf_counter() - start)
    print(f"{args.items} items ({args.text_chars}-character texts): {held / args.items:.0f} bytes held per item, "
          f"{held / 2**20:.0f} MiB in all; outcomes() median {statistics.median(times) * 1000:.1f} ms (5 calls)")


if __name__ == "__main__":
    main()
