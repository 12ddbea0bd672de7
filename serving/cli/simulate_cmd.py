"""``cascade simulate``: the command's arguments and report; the simulation itself is
``serving.cli.simulate`` (imported when the command runs: it loads torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.cli.args import add_column_flags, at_least_one, share


def run(args: argparse.Namespace) -> int:
    from serving.config import load_config
    from serving.cli.simulate import simulate
    from serving.cli.simulate_plot import plot_rounds

    config = load_config(args.config, home=args.home or Path(".cascade-simulation"), port=args.port, data=args.data,
                         text_column=args.text_column, label_column=args.label_column)
    config = config.model_copy(update={
        "student": config.student.model_copy(update={"poll_registry_s": 0.5}),
        "routing": config.routing.model_copy(update={"goal": args.goal, "teacher_timeout_s": args.teacher_timeout}),
    })
    say = (lambda _: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    report = simulate(config, args.rounds, args.seed_fraction, not args.no_shadow, args.epochs,
                      shift=args.shift, typo_rate=args.typo_rate, say=say, feedback_rate=args.feedback_rate, wrong_teacher=args.wrong_teacher,
                      promote_at_once=args.promote_at_once)
    plot_rounds(report, args.out)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"teacher alone: {report['teacher_accuracy']:.4f}; stream shift: {report['shift']}; goal: {report['goal']}")
        print("| round | teacher share | degraded | teacher share on test | cascade test accuracy | cost / 1,000 | goal (agreement) "
              "| static: agreement, teacher share | controlled: agreement, teacher share, threshold (source) | served agreement "
              "| control started (at) | refresh |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in report["rounds"]:
            target = "-" if r["goal_target"] is None else f"{r['goal_target']:.4f}"
            print(f"| {r['round']} | {r['teacher_share']:.2%} | {r['degraded_share']:.2%} | {r['test_teacher_share']:.2%} | "
                  f"{r['cascade_accuracy']:.4f} | {r['cost_per_1000']:.0f} | {target} | "
                  f"{r['static_agreement']:.4f}, {r['static_teacher_share']:.2%} | "
                  f"{r['controlled_agreement']:.4f}, {r['controlled_teacher_share']:.2%}, {r['controlled_threshold']:.4g} ({r['threshold_source']}) | "
                  f"{r['served_agreement']:.4f} | {_start(r)} | {r['refresh']} |")
        if report["wrong_classes"] or report["feedback_rate"]:
            print(_feedback_table(report))
        print(f"plot: {args.out}")
    return 0


def _start(row: dict) -> str:
    """Where control started the student serving at the round's end: its shadow's evidence or the safe start."""
    if row["control_start"] is None:
        return "-"
    at = row["control_start_threshold"]
    return f"{row['control_start'].replace('_', ' ')}{f' ({at:.2f})' if at is not None else ''}"


def _feedback_table(report: dict) -> str:
    """Per round: recall on the wrong teacher's classes, and the feedback sent, learned and measured."""
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    teacher = f"teacher wrong on {', '.join(report['wrong_classes'])} (recall {share(report['teacher_recall'])}); " if report["wrong_classes"] else ""
    lines = [f"\n{teacher}feedback on {report['feedback_rate']:.0%} of traffic",
             "| round | student recall (wrong classes) | cascade recall (wrong classes) | feedback sent | refresh: feedback used "
             "| contradicted the teacher | distrusted teacher labels | held-out feedback: candidate, current accuracy (items) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rounds"]:
        held = (f"{r['candidate_feedback_accuracy']:.4f}, {r['current_feedback_accuracy']:.4f} ({r['feedback_holdout_items']})"
                if r["feedback_holdout_items"] else "-")
        lines.append(f"| {r['round']} | {share(r['wrong_class_student_recall'])} | {share(r['wrong_class_cascade_recall'])} | {r['feedback_sent']} "
                     f"| {r['refresh_feedback_rows']} | {r['refresh_feedback_contradicted']} | {', '.join(r['refresh_distrusted_labels']) or '-'} | {held} |")
    final = report["final"]
    lines.append(f"| after | {share(final['wrong_class_student_recall'])} | {share(final['wrong_class_cascade_recall'])} | | | | | |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """The ``simulate`` subcommand's arguments."""
    from distill.config import RefreshConfig

    p = sub.add_parser("simulate", help="the refresh loop's story: teacher share falling round after round", description="Distil a seed student on a slice of train, stream the rest of train through the running cascade in rounds, refresh after each, and report per round the teacher's share, the cascade's test accuracy and the cost per 1,000 requests (table, --json, PNG).")
    p.add_argument("--home", type=Path, default=None,
                   help="a registry for the simulation (default: ./.cascade-simulation); each run logs escalations to a fresh "
                        "<home>/simulations/<UTC time>/escalations, so that it learns from its own traffic alone, while the "
                        "home's teacher and cache are reused")
    p.add_argument("--data", default=None, help="data set (default: banking77, or the config's)")
    add_column_flags(p)
    p.add_argument("--config", type=Path, default=None, help="serving config file")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of traffic and refresh (default: 5)")
    p.add_argument("--seed-fraction", type=float, default=0.1, help="share of train the seed student is distilled on (default: 0.1)")
    p.add_argument("--goal", default="accuracy>=teacher", help="policy goal of every student in the run (default: accuracy>=teacher)")
    p.add_argument("--no-shadow", action="store_true",
                   help="let the seed student answer from round 1 (default: it starts in shadow, every round-1 item goes to the teacher "
                        "and is logged, since a few hundred rows are too little evidence for a threshold)")
    p.add_argument("--promote-at-once", action="store_true",
                   help="swap to each round's passing candidate right after its refresh (default: through a shadow, as cascade refresh "
                        "does: judged on the next round's traffic, then started by online control from that evidence)")
    p.add_argument("--epochs", type=at_least_one, default=RefreshConfig().train.epochs,
                   help=f"epochs of each refresh round (default: {RefreshConfig().train.epochs}, as cascade refresh)")
    p.add_argument("--teacher-timeout", type=float, default=120.0,
                   help="seconds an escalation waits for the teacher (default: 120: a simulation measures learning, "
                        "so a loaded machine must not turn escalations into degraded answers)")
    p.add_argument("--shift", choices=["none", "typos"], default="none",
                   help="make the traffic differ from validation: typos gives words seeded typos (letters swapped, dropped or "
                        "doubled); the report compares the static threshold's live agreement with the controlled one's (default: none)")
    p.add_argument("--typo-rate", type=float, default=0.2, help="with --shift typos: share of words (3+ characters) given a typo (default: 0.2)")
    p.add_argument("--feedback-rate", type=share, default=0.0,
                   help="after each round's traffic, send the data set's gold labels of this share of the round's items to POST /v1/feedback "
                        "(the run sets $CASCADE_FEEDBACK_TOKEN for its service); refresh learns from them (default: 0)")
    p.add_argument("--wrong-teacher", default=None, metavar="CLASS[,CLASS...] | COUNT",
                   help="serve a copy of the teacher that is systematically wrong on these classes (at least two; or a count of classes "
                        "drawn with a fixed seed): each one's inputs get the next one's label; the report adds the student's and the "
                        "cascade's recall on them per round, and the home's teacher is restored at the end")
    p.add_argument("--out", type=Path, default=Path("simulation.png"), help="PNG to write (default: simulation.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
