"""``cascade serve``: serve the cascade over HTTP on a local Ray cluster until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.args import add_column_flags


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from distill.bootstrap import ensure_goal
    from serving.cli import runner
    from serving.cli.data import config_registry
    from serving.config import load_config

    config = load_config(args.config, home=args.home, port=args.port, host=args.host, data=args.data,
                         text_column=args.text_column, label_column=args.label_column)
    goal = config.routing.goal
    registry = config_registry(config, progress=not args.quiet, goal=goal)
    if config.student.model is None:  # a pinned student version keeps the policy it was pinned with
        ensure_goal(registry, config.home, config.data, goal, config.text_column, config.label_column)
    print(f"starting the cascade (Ray Serve) on {config.host}:{config.port} ...", flush=True)
    url = runner.start(config)
    print(f"cascade serving at {url}\n  classify: POST {url}/v1/classify\n  API docs: {url}/docs\n"
          f"  dashboard: {url}/dashboard\n  Prometheus metrics: http://{config.host}:{config.metrics.port}/metrics "
          f"(Ray names them ray_cascade_*; deploy/prometheus/prometheus.yml stores them as cascade_*)\n"
          f"  escalation log: {config.paths().escalations}\n"
          + (f"  proxy: HAProxy (Ray Serve's fast path; proxy.kind: serve for Ray's Python proxy), stats at "
             f"http://{config.proxy.admin_host}:{config.proxy.stats_port}/stats\n" if config.proxy.kind == "haproxy"
             else "  proxy: Ray Serve's Python proxy (proxy.kind: haproxy for the fast path)\n")
          + "Ctrl-C stops it.", flush=True)
    stopped = threading.Event()
    # explicit handlers: a shell that starts us in the background sets SIGINT to "ignore"
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    print("stopping ...", flush=True)
    runner.stop()
    return 0


def add_parser(sub) -> None:
    """The ``serve`` subcommand's arguments."""
    p = sub.add_parser("serve", help="serve the cascade over HTTP on Ray Serve", description="Start the cascade (ingress, student, teacher, escalation log) on a local Ray cluster; bootstraps the default models when the registry is empty.")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON file validated as serving.config.CascadeConfig")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000, or the config's)")
    p.add_argument("--host", default=None, help="bind address (default: 127.0.0.1, or the config's)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: $CASCADE_HOME or ./.cascade)")
    p.add_argument("--data", default=None, help="data set to bootstrap the default models from (default: banking77, or the config's)")
    add_column_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
