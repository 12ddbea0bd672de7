"""``cascade soak``: the command's arguments and report; the load itself is ``serving.cli.soak``
(imported when the command runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.cli.args import add_column_flags


def run(args: argparse.Namespace) -> int:
    from serving.cli.data import config_registry, config_splits
    from serving.config import load_config
    from serving.cli.soak import soak

    config = load_config(args.config, home=args.home, port=args.port, data=args.data, text_column=args.text_column, label_column=args.label_column)
    texts = config_splits(config).get("test").texts
    url = args.url
    if url is None:
        from serving.cli import runner

        config_registry(config, progress=False)
        print(f"soak: starting the cascade on {config.host}:{config.port} ...", file=sys.stderr, flush=True)
        url = runner.start(config)
    try:
        print(f"soak: {args.clients} clients, {args.batch} text(s) per request, {args.seconds:.0f} s against {url}", file=sys.stderr, flush=True)
        report = soak(url, texts, clients=args.clients, seconds=args.seconds, batch=args.batch)
    finally:
        if args.url is None:
            runner.stop()
    if args.json:
        print(report.model_dump_json())
    else:
        print(f"{report.requests} requests in {report.seconds} s ({report.requests_per_s}/s), errors {report.errors} {report.statuses}\n"
              f"latency p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, max {report.max_ms} ms\n"
              f"items {report.items}, escalated {report.escalated}, degraded {report.degraded or 0}")
    return 1 if report.errors else 0


def add_parser(sub) -> None:
    """The ``soak`` subcommand's arguments."""
    p = sub.add_parser("soak", help="hold the cascade under steady concurrent load; report errors, p50/p99, degraded items", description="Drive N concurrent clients (one async Python process) against a running cascade (--url) or one started here, for a fixed time; report non-2xx answers and transport errors, latency percentiles and degraded items by cause. Exits 1 if any request failed.")
    p.add_argument("--url", default=None, help="a running cascade (default: start one from --config/--home/--data)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration (default: 60)")
    p.add_argument("--batch", type=int, default=1, help="texts per request (default: 1)")
    p.add_argument("--config", type=Path, default=None, help="serving config file (same as cascade serve)")
    p.add_argument("--port", type=int, default=None, help="HTTP port when starting one (default: 8000)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory")
    p.add_argument("--data", default=None, help="data set whose test texts are sent (default: banking77, or the config's)")
    add_column_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)
