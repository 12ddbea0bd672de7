"""What the ``cascade`` commands share: argparse types, the flags several commands take (home,
data set and columns, costs), and what a command makes of them (the home, the registry, a
model, the cost model). Light to import: ``cascade --help`` builds every parser from these
without loading torch or Ray; what loads models is imported when called."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.settings import DEFAULT_DATA, default_home
from router import CostModel
from serving.config import RoutingConfig


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def share(text: str) -> float:
    """An argparse type: a share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def add_common(parser: argparse.ArgumentParser, data: bool = True) -> None:
    """--home and -q; with ``data``, also --data and its column flags."""
    parser.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: $CASCADE_HOME or ./.cascade)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if data:
        parser.add_argument("--data", default=DEFAULT_DATA, help=f"'{DEFAULT_DATA}', a directory with train/test files, a csv/jsonl/parquet file, or hf:NAME (default: {DEFAULT_DATA})")
        add_column_flags(parser)


def add_column_flags(parser: argparse.ArgumentParser) -> None:
    """The data set's column names, for data sets whose columns are not guessed."""
    parser.add_argument("--text-column", default=None, help="name of the data set's text column (default: guessed: text, sentence, query, ...)")
    parser.add_argument("--label-column", default=None, help="name of the data set's label column (default: guessed: label, category, intent, ...)")


def add_cost_flags(parser: argparse.ArgumentParser) -> None:
    """--student-cost and --teacher-cost, defaulting to the serving config's (routing.*_cost)."""
    routing = RoutingConfig()
    parser.add_argument("--student-cost", type=float, default=routing.student_cost, help=f"cost units per student call (default: {routing.student_cost:g})")
    parser.add_argument("--teacher-cost", type=float, default=routing.teacher_cost, help=f"cost units per teacher call (default: {routing.teacher_cost:g})")


def home_dir(args: argparse.Namespace) -> Path:
    """--home, else $CASCADE_HOME or ./.cascade, resolved."""
    return (args.home or default_home()).resolve()


def open_registry(args: argparse.Namespace):
    """The registry, bootstrapping the embedded defaults when no model exists yet."""
    from distill.bootstrap import ensure_models

    return ensure_models(home_dir(args), args.data, text_column=args.text_column, label_column=args.label_column, progress=not args.quiet)


def load_model(registry, role: str, ref: str | None):
    """A model by registered version, current pointer (None), directory path or hub id."""
    from distill.backends import HFClassifier

    return HFClassifier.load(registry.resolve(role, ref))


def cost_model(args: argparse.Namespace) -> CostModel:
    """The cost model of --student-cost and --teacher-cost."""
    return CostModel(student_units=args.student_cost, teacher_units=args.teacher_cost)
