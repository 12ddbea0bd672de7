"""``cascade calibrate``: fit the student's temperature and threshold(s) for a goal and register the
result as a new student version."""

from __future__ import annotations

import argparse
import json

from router import MEASURES, EscalationPolicy
from distill.settings import Paths
from serving.cli.args import add_common, add_cost_flags, cost_model, home_dir, load_model, open_registry


def run(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.frontier import calibrate
    from distill.pipeline import TeacherCache

    registry = open_registry(args)
    student, teacher = load_model(registry, "student", args.student), load_model(registry, "teacher", args.teacher)
    splits = load_splits(args.data, args.text_column, args.label_column)
    _, report = calibrate(registry, student, teacher, splits, TeacherCache(Paths.under(home_dir(args)).cache), args.goal,
                          args.measure, args.per_class, cost_model(args), promote=args.promote)
    print(json.dumps(report, indent=2))
    return 0


def add_parser(sub) -> None:
    """The ``calibrate`` subcommand's arguments."""
    from distill.config import DEFAULT_GOAL

    p = sub.add_parser("calibrate", help="fit the student's temperature and threshold for a goal; register it", description="Fit temperature scaling and the escalation threshold(s) on the validation split for a goal, register the result as a new student version (weights shared), and report validation and test figures.")
    add_common(p)
    p.add_argument("--goal", default=DEFAULT_GOAL, help=f"accuracy>=teacher, accuracy>=0.93, agreement>=0.97 or budget<=0.10 (default: {DEFAULT_GOAL})")
    p.add_argument("--measure", choices=sorted(MEASURES), default=EscalationPolicy.measure, help=f"confidence measure (default: {EscalationPolicy.measure})")
    p.add_argument("--per-class", action="store_true", help="also fit per-class thresholds where they lower escalation on validation")
    p.add_argument("--student", default=None, help="student version (default: current)")
    p.add_argument("--teacher", default=None, help="teacher version, directory or hub id (default: current)")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="register without making it current")
    add_cost_flags(p)
    p.set_defaults(func=run)
