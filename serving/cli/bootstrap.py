"""``cascade bootstrap``: build the embedded teacher and a student distilled from it, unless the
registry already has them."""

from __future__ import annotations

import argparse

from serving.cli.args import add_common, open_registry


def run(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    print(f"teacher: {registry.current('teacher')}\nstudent: {registry.current('student')}")
    return 0


def add_parser(sub) -> None:
    """The ``bootstrap`` subcommand's arguments."""
    p = sub.add_parser("bootstrap", help="build the embedded teacher and distilled student if missing", description="Build the default teacher (frozen MiniLM + fitted head) and a student distilled from it, unless the registry already has them.")
    add_common(p)
    p.set_defaults(func=run)
