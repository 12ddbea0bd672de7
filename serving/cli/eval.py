"""``cascade eval``: accuracy, calibration and speed of teacher, student and cascade on one split."""

from __future__ import annotations

import argparse
import json

from serving.cli.args import add_common, add_cost_flags, cost_model, load_model, open_registry


def run(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.evaluate import evaluate
    from distill.metadata import escalation_policy

    registry = open_registry(args)
    teacher = load_model(registry, "teacher", args.teacher)
    student = load_model(registry, "student", args.student)
    split = load_splits(args.data, args.text_column, args.label_column, test_data=args.test_data).get(args.split)
    policy = escalation_policy(student.meta)
    report = {"split": args.split, **evaluate(teacher, student, split.texts, split.label_ids(teacher.labels), policy, cost_model(args), args.threshold)}
    if args.json:
        print(json.dumps(report))
    else:
        _print_eval(report)
    return 0


def _print_eval(report: dict) -> None:
    print(f"split: {report['split']} ({report['rows']} rows)")
    print(f"{'model':<9}{'accuracy':>10}{'macro-F1':>10}{'agree':>8}{'ECE':>8}{'ms/query':>10}{'queries/s':>11}")
    for name in ("teacher", "student"):
        r = report[name]
        print(f"{name:<9}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}{r.get('teacher_agreement', 1.0):>8.4f}{r['ece']:>8.4f}{r['latency_ms']:>10.3f}{r['queries_per_s']:>11.1f}")
    c = report["cascade"]
    print(f"cascade: accuracy {c['accuracy']:.4f}, escalation {c['escalation_rate']:.2%} at threshold {c['threshold']:.4f} ({c['measure']}, T={c['temperature']}), "
          f"cost/1000 {c['cost_per_1000']} vs teacher-only {c['teacher_only_cost_per_1000']}")
    print(f"student is {report['student_speedup']}x faster than the teacher per single query")
    worst = ", ".join(f"{w['label']} {w['recall']:.2f}" for w in report["student"]["worst_classes"])
    print(f"student's worst classes (recall): {worst}")


def add_parser(sub) -> None:
    """The ``eval`` subcommand's arguments."""
    p = sub.add_parser("eval", help="accuracy, calibration and speed of teacher, student and cascade", description="Evaluate teacher, student and the cascade on one split: accuracy, macro-F1, teacher agreement, ECE, worst-class recall, latency and throughput.")
    add_common(p)
    p.add_argument("--split", choices=("test", "validation", "train"), default="test")
    p.add_argument("--test-data", default=None, help="a file to use as the test split")
    p.add_argument("--teacher", default=None, help="teacher version, directory or hub id (default: current)")
    p.add_argument("--student", default=None, help="student version, directory or hub id (default: current)")
    p.add_argument("--threshold", type=float, default=None, help="override the student's fitted threshold")
    add_cost_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
