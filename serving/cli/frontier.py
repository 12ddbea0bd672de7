"""``cascade frontier``: cost against accuracy over thresholds, as a PNG and a Markdown table."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.errors import DistillError
from distill.settings import Paths
from serving.cli.args import add_common, add_cost_flags, cost_model, home_dir, load_model, open_registry


def run(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.frontier import frontier_points, frontier_table, plot_frontier, split_outputs
    from distill.metadata import escalation_policy
    from distill.pipeline import TeacherCache
    from router import cascade_figures

    registry = open_registry(args)
    student, teacher = load_model(registry, "student", args.student), load_model(registry, "teacher", args.teacher)
    data = load_splits(args.data, args.text_column, args.label_column).get(args.split)
    student_probs, teacher_probs, labels = split_outputs(student, teacher, data, TeacherCache(Paths.under(home_dir(args)).cache))
    if labels is None:
        raise DistillError(f"the {args.split} split has no labels: the frontier needs them for accuracy")
    policy = escalation_policy(student.meta)
    costs = cost_model(args)
    points, chosen = frontier_points(policy, student_probs, teacher_probs, labels, costs, args.points)
    at = cascade_figures(student_probs, teacher_probs, labels, policy, costs)
    table = frontier_table(points, chosen, at.teacher_accuracy, at.student_accuracy, costs)
    title = f"cascade frontier on {args.split} ({len(labels)} rows), student {student.version}"
    plot_frontier(points, chosen, at.teacher_accuracy, at.student_accuracy, costs, args.out, title)
    table_path = args.table or args.out.with_suffix(".md")
    table_path.write_text(table + "\n")
    print(table)
    print(f"\nwrote {args.out} and {table_path}")
    return 0


def add_parser(sub) -> None:
    """The ``frontier`` subcommand's arguments."""
    p = sub.add_parser("frontier", help="plot and tabulate cost against accuracy over thresholds", description="For each threshold: escalation rate, cascade accuracy, teacher agreement and cost per 1,000 requests, with student-only, teacher-only and the chosen operating point; a PNG and a Markdown table.")
    add_common(p)
    p.add_argument("--out", type=Path, default=Path("frontier.png"), help="PNG to write (default: frontier.png)")
    p.add_argument("--table", type=Path, default=None, help="Markdown table to write (default: beside the PNG, .md)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--points", type=int, default=25, help="thresholds on the curve (default: 25)")
    p.add_argument("--student", default=None, help="student version (default: current)")
    p.add_argument("--teacher", default=None, help="teacher version (default: current)")
    add_cost_flags(p)
    p.set_defaults(func=run)
