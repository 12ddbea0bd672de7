"""The ``cascade`` command (``python -m serving.cli`` too): :func:`build_parser` assembles the
subcommands from :data:`COMMANDS`, and :func:`main` runs the chosen one.

Each subcommand is a module here with ``add_parser(sub)`` (its arguments) and ``run(args)`` (its
body); the arguments several share are ``serving.cli.args``. A command imports what it needs
when it runs, so ``export-serve-config`` loads neither Ray Serve nor torch. Where a command's
logic is a module of its own (``bench``, ``soak``, ``simulate``, ``batch``), its command module
is ``<name>_cmd``; ``distill``'s is ``distill_cmd``, beside the ``distill`` package.

The commands that run apart from the Ray application live beside them: ``runner`` (start and
stop the cascade locally), ``bench``, ``soak``, ``simulate`` and ``batch``."""

from __future__ import annotations

import argparse
import importlib
import sys

from distill.errors import DistillError
from router import RouterError
from serving.config import ConfigError

EPILOG = "Models and caches live in --home (default $CASCADE_HOME or ./.cascade)."

# command -> its module under serving.cli, in the order ``cascade --help`` lists them
COMMANDS = {
    "bootstrap": "bootstrap",
    "distill": "distill_cmd",
    "eval": "eval",
    "calibrate": "calibrate",
    "frontier": "frontier",
    "serve": "serve",
    "batch": "batch_cmd",
    "export-serve-config": "export",
    "bench": "bench_cmd",
    "soak": "soak_cmd",
    "refresh": "refresh",
    "simulate": "simulate_cmd",
    "models": "models",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; defaults come from the config classes."""
    parser = argparse.ArgumentParser(prog="cascade", description="Serve a student/teacher cascade and keep distilling the student.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"serving.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DistillError, RouterError, ConfigError) as err:
        print(f"cascade {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
