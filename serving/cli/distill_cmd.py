"""``cascade distill``: train a student from a teacher and register it (or write it to --out).

Not ``distill.py``: a module of that name here would read as the ``distill`` package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from distill.settings import Paths
from serving.cli.args import add_common, at_least_one, home_dir, load_model, open_registry


def run(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.config import StudentSpec, TrainConfig
    from distill.pipeline import TeacherCache, data_record, distill_student, fit_student_policy, new_student_meta, register_model
    registry = open_registry(args)
    teacher = load_model(registry, "teacher", args.teacher)
    splits = load_splits(args.data, args.text_column, args.label_column)
    train = splits.train
    if args.train_fraction < 1.0:
        from distill.data import split_validation

        _, train = split_validation(train, args.train_fraction, seed=args.seed)
    mode = "hard" if args.hard_labels_only else args.mode
    config = TrainConfig(mode=mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, alpha=args.alpha, seed=args.seed)
    spec = StudentSpec(kind=args.kind, layers=args.layers, hidden_size=args.hidden_size, train=config)
    cache = TeacherCache(Paths.under(home_dir(args)).cache)
    student, metrics = distill_student(teacher, train, spec, cache, progress=not args.quiet)
    policy = fit_student_policy(student, teacher, splits.validation, cache, args.goal)
    metrics["validation_accuracy"] = policy.validation.get("student_accuracy")
    record = data_record(args.data, splits) | {"train_rows": len(train)}
    meta = new_student_meta(teacher, spec, record, metrics, policy, parent=None)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        student.save(args.out)
        from distill.metadata import write_meta

        write_meta(args.out, meta)
        print(f"student {meta.version} written to {args.out}")
    else:
        register_model(registry, student, meta, promote=args.promote)
        print(f"student {meta.version} registered" + (" and promoted" if args.promote else ""))
    print(json.dumps({"version": meta.version, "mode": mode, **{k: v for k, v in metrics.items() if k != "epoch_loss"}, "policy": policy.to_dict()}, indent=2))
    return 0


def add_parser(sub) -> None:
    """The ``distill`` subcommand's arguments; defaults come from distill.config."""
    from distill.config import DEFAULT_GOAL, Mode, StudentKind, StudentSpec, TrainConfig

    p = sub.add_parser("distill", help="train a student from a teacher and register it", description="Distil a student from a teacher's soft labels (or its top labels, or hard labels only) and register it as a new version.")
    add_common(p)
    p.add_argument("--teacher", default=None, help="teacher version, model directory or hub id (default: current teacher)")
    p.add_argument("--kind", choices=get_args(StudentKind), default=StudentSpec.kind, help=f"bow: bag of word pieces + MLP (fast on CPU); transformer: k of the teacher's layers (default: {StudentSpec.kind})")
    p.add_argument("--layers", type=at_least_one, default=StudentSpec.layers, help=f"teacher layers kept by a transformer student (default: {StudentSpec.layers})")
    p.add_argument("--hidden-size", type=int, default=StudentSpec.hidden_size, help=f"MLP width of a bow student (default: {StudentSpec.hidden_size})")
    p.add_argument("--mode", choices=get_args(Mode), default=TrainConfig.mode, help="soft: teacher probabilities; label-only: a black-box teacher's top label; hard: ground truth only")
    p.add_argument("--hard-labels-only", action="store_true", help="same as --mode hard: the no-teacher baseline")
    defaults = TrainConfig()
    p.add_argument("--epochs", type=at_least_one, default=defaults.epochs, help=f"passes over the data (default: {defaults.epochs})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"rows per step (default: {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    p.add_argument("--temperature", type=float, default=defaults.temperature, help=f"distillation temperature T (default: {defaults.temperature})")
    p.add_argument("--alpha", type=float, default=defaults.alpha, help=f"weight of the teacher term (default: {defaults.alpha})")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"seeds initialisation and shuffling (default: {defaults.seed})")
    p.add_argument("--train-fraction", type=float, default=1.0, help="train on this stratified fraction of the training split (default: 1.0)")
    p.add_argument("--goal", default=DEFAULT_GOAL, help="escalation goal fitted on validation: accuracy>=teacher, accuracy>=0.93, agreement>=0.97, budget<=0.10")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="register without making it current")
    p.add_argument("--out", type=Path, default=None, help="write the student to this directory instead of the registry")
    p.set_defaults(func=run)
