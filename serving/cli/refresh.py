"""``cascade refresh``: retrain the student from the escalation log (and outcome feedback), gate the
candidate and promote it if better; once, or with --watch on a schedule."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.cli.args import add_column_flags, at_least_one, share
from serving.config import CascadeConfig, load_config


def refresh_config(args: argparse.Namespace):
    """The RefreshConfig that ``cascade refresh``'s arguments describe; without --epochs, a warm
    start trains RefreshConfig's passes and a fresh student as many as ``cascade distill``."""
    from distill.config import RefreshConfig, TrainConfig

    defaults = RefreshConfig()
    epochs = args.epochs or (TrainConfig().epochs if args.from_scratch else defaults.train.epochs)
    return RefreshConfig(
        replay_ratio=args.replay_ratio, margin_floor=args.margin_floor, since=args.since, min_records=args.min_records,
        warm_start=not args.from_scratch, tolerance=args.tolerance, goal=args.goal, workers=args.workers,
        train=TrainConfig(epochs=epochs, seed=args.seed),
    )


def serving_config(args: argparse.Namespace) -> CascadeConfig:
    """The serving config whose home, data set and logs a round reads: --config's, with the
    command's flags over it."""
    config = load_config(args.config, home=args.home, data=args.data, text_column=args.text_column, label_column=args.label_column)
    if args.log is not None:
        config = config.model_copy(update={"log": config.log.model_copy(update={"path": str(args.log)})})
    if args.feedback is not None:
        config = config.model_copy(update={"feedback": config.feedback.model_copy(update={"path": str(args.feedback)})})
    return config


def run(args: argparse.Namespace) -> int:
    from distill.config import WatchConfig
    from distill.feedback import read_feedback
    from distill.refresh import failures_recorded, refresh, refresh_lock, watch
    from distill.refresh_data import FeedbackSettings
    from serving.cli.data import config_registry, config_splits

    served = serving_config(args)
    paths = served.paths()
    registry = config_registry(served, progress=not args.quiet)
    splits = config_splits(served)
    config = refresh_config(args)
    log_dir, feedback_log = paths.escalations, paths.feedback
    settings = FeedbackSettings() if args.feedback_holdout is None else FeedbackSettings(holdout_share=args.feedback_holdout)
    if args.watch:
        print(f"watching {log_dir}: a round every {args.every_records} new records or {args.every_minutes} minutes; Ctrl-C stops", flush=True)
        try:
            watch(registry, paths.home, splits, log_dir, config, served.data,
                  WatchConfig(every_records=args.every_records, every_minutes=args.every_minutes), on_round=lambda report: print(json.dumps(report), flush=True),
                  feedback_log=feedback_log, feedback_settings=settings, shadow=args.shadow)
        except KeyboardInterrupt:
            return 0
    with refresh_lock(paths.home), failures_recorded(registry):
        report = refresh(registry, paths.home, splits, log_dir, config, served.data, progress=not args.quiet,
                         feedback=read_feedback(feedback_log).values(), feedback_settings=settings, shadow=args.shadow)
    print(json.dumps(report, indent=2))
    print(_refresh_summary(report), file=sys.stderr)
    return 0


def _refresh_summary(report: dict) -> str:
    """One round's outcome in a line: the decision, and what feedback it used and measured."""
    f, used = report["figures"], report["data"]["feedback"]
    decision = "in shadow" if report["shadow"] else "promoted" if report["promoted"] else f"rejected ({'; '.join(report['reasons'])})"
    measured = (f"; held-out feedback accuracy candidate {f['candidate_feedback_accuracy']:.4f}, current {f['current_feedback_accuracy']:.4f}, "
                f"teacher {f['teacher_feedback_accuracy']:.4f} on {f['feedback_items']} items" if f["feedback_items"] else "")
    return (f"refresh: {report['version']} {decision}; trained on {report['data']['escalation_rows']} escalation records and "
            f"{used['used']} feedback labels ({used['contradicted_teacher']} contradicted the teacher){measured}")


def add_parser(sub) -> None:
    """The ``refresh`` subcommand's arguments; defaults come from distill.config."""
    from distill.config import DEFAULT_GOAL, RefreshConfig, TrainConfig, WatchConfig

    p = sub.add_parser("refresh", help="retrain the student from the escalation log; gate; promote if better", description="One refresh round: escalation records (teacher soft labels) plus a replay of the base training data train a candidate student; it passes only if, on the validation split, it is at least as accurate as the current student and meets the goal with no more escalation; a passing candidate goes into shadow, judged on live traffic by the running service (or is promoted at once with --no-shadow). The decision is recorded either way; running cascades pick up a promotion within poll_registry_s.")
    p.add_argument("--config", type=Path, default=None,
                   help="serving config (same as cascade serve): its home, data set and columns, escalation log and feedback log")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: the config's, else $CASCADE_HOME or ./.cascade)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--data", default=None, help="base data set replayed beside the log (default: the config's, else banking77)")
    add_column_flags(p)
    p.add_argument("--log", type=Path, default=None, help="escalation log directory (default: the config's log.path, else <home>/escalations)")
    p.add_argument("--replay-ratio", type=float, default=RefreshConfig.replay_ratio, help=f"base rows replayed per escalation row (default: {RefreshConfig.replay_ratio})")
    p.add_argument("--margin-floor", type=float, default=RefreshConfig.margin_floor, help="drop records whose teacher top-2 margin is below this (default: 0)")
    p.add_argument("--since", default=None, help="only records at or after this ISO time")
    p.add_argument("--min-records", type=int, default=RefreshConfig.min_records, help="refuse to train on fewer usable records (default: 1)")
    p.add_argument("--from-scratch", action="store_true", help="train from the teacher's embeddings instead of warm-starting from the current student")
    p.add_argument("--epochs", type=at_least_one, default=None,
                   help=f"training epochs (default: {RefreshConfig().train.epochs} for a warm start, {TrainConfig().epochs} with --from-scratch)")
    p.add_argument("--tolerance", type=float, default=RefreshConfig.tolerance, help="accuracy the gate forgives (default: 0)")
    p.add_argument("--goal", default=DEFAULT_GOAL, help=f"policy goal the gate checks (default: {DEFAULT_GOAL})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="train as a Ray Train job with this many workers (default: 0, in this process)")
    p.add_argument("--feedback", type=Path, default=None,
                   help="outcome feedback log directory (default: the config's feedback.path, else <home>/feedback): true labels override the teacher's where they "
                        "disagree, and items the student answered alone become hard-label examples")
    p.add_argument("--feedback-holdout", type=share, default=None,  # None: distill.refresh.FeedbackSettings' (not imported for --help: torch)
                   help="share of feedback items (by a hash of request id and index) never trained on: the gate reports both students' "
                        "accuracy on them and rejects a candidate significantly worse there; evaluation feedback is always held out "
                        "(default: 0.2)")
    p.add_argument("--shadow", action=argparse.BooleanOptionalAction, default=True,
                   help="a candidate that passes the gate goes into shadow (the default): the serving replicas judge it on live traffic, "
                        "promote it once it agrees with the teacher no worse and escalates less, and online control starts it from that "
                        "evidence instead of sending every item to the teacher; --no-shadow promotes it at once (control then starts it at "
                        "the safe start): use it when no service is running to judge the candidate")
    p.add_argument("--watch", action="store_true", help="keep running: a round every --every-records new records or --every-minutes, whichever first")
    p.add_argument("--every-records", type=at_least_one, default=WatchConfig.every_records, help=f"with --watch: new records that trigger a round (default: {WatchConfig.every_records})")
    p.add_argument("--every-minutes", type=float, default=WatchConfig.every_minutes, help=f"with --watch: minutes after which new records trigger a round (default: {WatchConfig.every_minutes:g})")
    p.set_defaults(func=run)
