"""Online control's guarantee and cost on streams whose truth is known (``tests/router/streams.py``):
the share of streams whose settled threshold serves under the goal, and the teacher's settled
share (answered plus audited), for this tree's controller (confidence-sequence bounds,
fixed-sequence certification, audits where the doubt is) and for the controller of an earlier
commit (read from git: per-look one-sided z bound, the cheapest of the grid, uniform audits), at
the same audit budget.

    python tests/benchmarks/control_validity.py [--streams 1000] [--baseline b09a325]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "router")]

from streams import GRID, Certified, random_stream, run_stream  # noqa: E402

from router import TargetAgreement  # noqa: E402


def load_baseline(revision: str):
    """``router/controller.py`` as it was at ``revision``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:router/controller.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_controller.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_controller", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Baseline:
    """The earlier controller: evidence counted per bin (known items taken as a uniform sample),
    uniform audits, a per-look z bound, the cheapest threshold whose bound meets the goal."""

    def __init__(self, module, goal: float, audit_rate: float):
        self.module, self.goal, self.audit_rate = module, TargetAgreement(goal), audit_rate
        self.evidence = module.LiveEvidence(GRID)
        self.settings = module.ControlSettings()

    def audit_probability(self, c: np.ndarray, index: int) -> np.ndarray:
        return np.full(len(c), self.audit_rate)

    def observe(self, c, known, agreed, probability) -> None:
        self.evidence.add(c, known, agreed)
        self.evidence.age(self.settings.window_items)

    def step(self, index: int) -> int:
        return self.module.control_step(self.evidence, index, self.goal, settings=self.settings).index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10_000, help="items per stream (a shifted stream: twice as many, shifting midway)")
    parser.add_argument("--goal", type=float, default=0.97)
    parser.add_argument("--audit-rate", type=float, default=0.02)
    parser.add_argument("--baseline", default="b09a325", help="the commit whose controller is compared (default: the last before this one)")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    rng = np.random.default_rng(0)
    streams = [random_stream(rng, shifted=k % 4 == 3) for k in range(args.streams)]
    rows = {}
    for name, make in (("certified (this tree)", lambda: Certified(args.goal, args.audit_rate)),
                       ("certified, uniform audits", lambda: Certified(args.goal, args.audit_rate, targeted=False)),
                       (f"baseline ({args.baseline})", lambda: Baseline(baseline, args.goal, args.audit_rate))):
        started = time.perf_counter()
        outcomes = [run_stream(s, seed, make(), items=args.items * (2 if s.shift != 1.0 else 1)) for seed, s in enumerate(streams)]
        rows[name] = (np.mean([o.agreement < args.goal for o in outcomes]), np.mean([o.consulted for o in outcomes]),
                      np.mean([s.share(o.threshold) for s, o in zip(streams, outcomes)]), time.perf_counter() - started)
    oracle = np.mean([s.share(s.cheapest(args.goal, after_shift=s.shift != 1.0)) for s in streams])
    print(f"{args.streams} streams (a quarter shifting midway), goal agreement>={args.goal}, audit budget {args.audit_rate:.0%}; "
          f"the cheapest threshold that truly holds it answers {oracle:.2%} by the teacher on average")
    print(f"{'procedure':<32} {'under the goal':>15} {'consulted':>10} {'answered':>9} {'seconds':>8}")
    for name, (fail, consulted, answered, seconds) in rows.items():
        print(f"{name:<32} {fail:>15.2%} {consulted:>10.2%} {answered:>9.2%} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
