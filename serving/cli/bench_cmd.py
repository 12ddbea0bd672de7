"""``cascade bench``: the command's arguments and report; the benchmark itself is
``serving.cli.bench`` (imported when the command runs: it loads Ray Serve)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.cli.args import add_column_flags
from serving.config import ConfigError


def run(args: argparse.Namespace) -> int:
    from serving.cli.bench import markdown_table, run_bench
    from serving.cli.data import config_registry, config_splits
    from serving.config import load_config

    config = load_config(args.config, home=args.home, port=args.port, data=args.data, text_column=args.text_column, label_column=args.label_column)
    # the bench measures capacity: a teacher-only pass queues longer than the serving timeout
    config = config.model_copy(update={"routing": config.routing.model_copy(update={"teacher_timeout_s": 300.0})})
    config_registry(config, progress=not args.quiet)
    split = config_splits(config).get(args.split)
    texts, labels = split.texts[: args.limit or None], split.labels[: args.limit or None]
    say = (lambda _: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.pairs < 0:
        raise ConfigError(f"--pairs must be 0 or more; got {args.pairs}")
    report = run_bench(config, texts, labels, seconds=args.seconds, pairs=args.pairs, both_paths=args.paths == "both", progress=say)
    table = markdown_table(report)
    if args.out:
        args.out.write_text(table + "\n")
    print(json.dumps(report) if args.json else table + "\n\n" + json.dumps(report["checks"]))
    return 0


def add_parser(sub) -> None:
    """The ``bench`` subcommand's arguments."""
    p = sub.add_parser("bench", help="benchmark teacher-only, student-only, cascade and an echo ceiling over HTTP", description="Start the cascade and an echo deployment on Ray Serve and measure, per service: accuracy over HTTP, teacher share, single-text requests/s and p50/p99 at 1 and 16 clients (wrk if installed), texts/s in 64-text requests with each Serve process's CPU per text, and in-process model-only throughput. The cascade is measured once online control has settled (test-set passes until the live threshold stops moving), and the report bounds cascade/student texts/s from the CPU each used.")
    p.add_argument("--config", type=Path, default=None, help="serving config file (same as cascade serve)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory")
    p.add_argument("--data", default=None, help="data set (default: banking77, or the config's)")
    add_column_flags(p)
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--limit", type=int, default=0, help="use only the first N texts (default: all)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each single-text load run (default: 10)")
    p.add_argument("--pairs", type=int, default=6,
                   help="echo/cascade run pairs at 16 clients, in alternating order, whose median ratio is the reported check; "
                        "each run also reports the CPU ms per request of each Serve process (default: 6; 0: none)")
    p.add_argument("--paths", choices=("both", "config"), default="both",
                   help="both: also measure the echo and the cascade on the proxy the config does not choose (HAProxy's fast "
                        "path or Ray Serve's Python proxy), side by side; config: only the config's (default: both)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run)
