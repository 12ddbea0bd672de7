"""``cascade batch``: runs ``serving.cli.batch`` (which also holds the command's arguments) and prints
its summary."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from serving.cli.batch import batch

    summary = batch(args)
    print(summary.model_dump_json() if args.json else summary.line())
    for example in summary.bad_examples:
        print(f"  bad row: {example}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """The ``batch`` subcommand: its arguments are ``serving.cli.batch.add_parser``'s (imported here, when
    the parser is built, as before the split), run by :func:`run`."""
    from serving.cli.batch import add_parser as add_batch_parser

    add_batch_parser(sub)
    sub.choices["batch"].set_defaults(func=run)
