"""The ``cascade`` command (``python -m serving.cli`` too). Each subcommand imports what it needs
when it runs, so ``--help`` is instant and ``export-serve-config`` loads neither Ray Serve nor torch.

The commands that run apart from the Ray application live beside it: ``runner`` (start and stop
the cascade locally), ``bench``, ``soak`` and ``simulate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from distill.errors import DistillError
from distill.settings import default_home
from router import MEASURES, CostModel, EscalationPolicy, RouterError
from serving.config import ConfigError, RoutingConfig

EPILOG = "Models and caches live in --home (default $CASCADE_HOME or ./.cascade)."


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(text: str) -> float:
    """An argparse type: a share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _common(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: $CASCADE_HOME or ./.cascade)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if data:
        parser.add_argument("--data", default="banking77", help="'banking77', a directory with train/test files, a csv/jsonl/parquet file, or hf:NAME (default: banking77)")
        _column_flags(parser)


def _column_flags(parser: argparse.ArgumentParser) -> None:
    """The data set's column names, for data sets whose columns are not guessed."""
    parser.add_argument("--text-column", default=None, help="name of the data set's text column (default: guessed: text, sentence, query, ...)")
    parser.add_argument("--label-column", default=None, help="name of the data set's label column (default: guessed: label, category, intent, ...)")


def _home(args: argparse.Namespace) -> Path:
    return (args.home or default_home()).resolve()


def _registry(args: argparse.Namespace):
    """The registry, bootstrapping the embedded defaults when no model exists yet."""
    from distill.bootstrap import ensure_models

    return ensure_models(_home(args), args.data, text_column=args.text_column, label_column=args.label_column, progress=not args.quiet)


def _load(registry, role: str, ref: str | None):
    """A model by registered version, current pointer (None), directory path or hub id."""
    from distill.backends import HFClassifier

    return HFClassifier.load(registry.resolve(role, ref))


def cmd_bootstrap(args: argparse.Namespace) -> int:
    registry = _registry(args)
    print(f"teacher: {registry.current('teacher')}\nstudent: {registry.current('student')}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.config import StudentSpec, TrainConfig
    from distill.pipeline import TeacherCache, data_record, distill_student, fit_student_policy, new_student_meta, register_model
    registry = _registry(args)
    teacher = _load(registry, "teacher", args.teacher)
    splits = load_splits(args.data, args.text_column, args.label_column)
    train = splits.train
    if args.train_fraction < 1.0:
        from distill.data import split_validation

        _, train = split_validation(train, args.train_fraction, seed=args.seed)
    mode = "hard" if args.hard_labels_only else args.mode
    config = TrainConfig(mode=mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, alpha=args.alpha, seed=args.seed)
    spec = StudentSpec(kind=args.kind, layers=args.layers, hidden_size=args.hidden_size, train=config)
    cache = TeacherCache(_home(args) / "cache")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.evaluate import evaluate
    from distill.metadata import escalation_policy

    registry = _registry(args)
    teacher = _load(registry, "teacher", args.teacher)
    student = _load(registry, "student", args.student)
    split = load_splits(args.data, args.text_column, args.label_column, test_data=args.test_data).get(args.split)
    policy = escalation_policy(student.meta)
    report = {"split": args.split, **evaluate(teacher, student, split.texts, split.label_ids(teacher.labels), policy, _costs(args), args.threshold)}
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


def _costs(args: argparse.Namespace) -> CostModel:
    return CostModel(student_units=args.student_cost, teacher_units=args.teacher_cost)


def _cost_flags(parser: argparse.ArgumentParser) -> None:
    """--student-cost and --teacher-cost, defaulting to the serving config's (routing.*_cost)."""
    routing = RoutingConfig()
    parser.add_argument("--student-cost", type=float, default=routing.student_cost, help=f"cost units per student call (default: {routing.student_cost:g})")
    parser.add_argument("--teacher-cost", type=float, default=routing.teacher_cost, help=f"cost units per teacher call (default: {routing.teacher_cost:g})")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.frontier import calibrate
    from distill.pipeline import TeacherCache

    registry = _registry(args)
    student, teacher = _load(registry, "student", args.student), _load(registry, "teacher", args.teacher)
    splits = load_splits(args.data, args.text_column, args.label_column)
    _, report = calibrate(registry, student, teacher, splits, TeacherCache(_home(args) / "cache"), args.goal,
                          args.measure, args.per_class, _costs(args), promote=args.promote)
    print(json.dumps(report, indent=2))
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from distill.data import load_splits
    from distill.frontier import frontier_points, frontier_table, plot_frontier, split_outputs
    from distill.metadata import escalation_policy
    from distill.pipeline import TeacherCache
    from router import cascade_figures

    registry = _registry(args)
    student, teacher = _load(registry, "student", args.student), _load(registry, "teacher", args.teacher)
    data = load_splits(args.data, args.text_column, args.label_column).get(args.split)
    student_probs, teacher_probs, labels = split_outputs(student, teacher, data, TeacherCache(_home(args) / "cache"))
    if labels is None:
        raise DistillError(f"the {args.split} split has no labels: the frontier needs them for accuracy")
    policy = escalation_policy(student.meta)
    costs = _costs(args)
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


def cmd_refresh(args: argparse.Namespace) -> int:
    from distill.config import WatchConfig
    from distill.data import load_splits
    from distill.feedback import feedback_dir, read_feedback
    from distill.refresh import FeedbackSettings, failures_recorded, refresh, refresh_lock, watch

    registry = _registry(args)
    splits = load_splits(args.data, args.text_column, args.label_column)
    config = refresh_config(args)
    log_dir = args.log or _home(args) / "escalations"
    feedback_log = args.feedback or feedback_dir(_home(args))
    settings = FeedbackSettings() if args.feedback_holdout is None else FeedbackSettings(holdout_share=args.feedback_holdout)
    if args.watch:
        print(f"watching {log_dir}: a round every {args.every_records} new records or {args.every_minutes} minutes; Ctrl-C stops", flush=True)
        try:
            watch(registry, _home(args), splits, log_dir, config, args.data,
                  WatchConfig(every_records=args.every_records, every_minutes=args.every_minutes), on_round=lambda report: print(json.dumps(report), flush=True),
                  feedback_log=feedback_log, feedback_settings=settings, shadow=args.shadow)
        except KeyboardInterrupt:
            return 0
    with refresh_lock(_home(args)), failures_recorded(registry):
        report = refresh(registry, _home(args), splits, log_dir, config, args.data, progress=not args.quiet,
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from serving.config import load_config
    from serving.cli.simulate import plot_rounds, simulate

    config = load_config(args.config, home=args.home or Path(".cascade-simulation"), port=args.port, data=args.data,
                         text_column=args.text_column, label_column=args.label_column)
    config = config.model_copy(update={
        "student": config.student.model_copy(update={"poll_registry_s": 0.5}),
        "routing": config.routing.model_copy(update={"goal": args.goal, "teacher_timeout_s": args.teacher_timeout}),
    })
    say = (lambda _: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    report = simulate(config, args.rounds, args.seed_fraction, not args.no_shadow, args.epochs,
                      shift=args.shift, typo_rate=args.typo_rate, say=say, feedback_rate=args.feedback_rate, wrong_teacher=args.wrong_teacher)
    plot_rounds(report, args.out)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"teacher alone: {report['teacher_accuracy']:.4f}; stream shift: {report['shift']}; goal: {report['goal']}")
        print("| round | teacher share | degraded | teacher share on test | cascade test accuracy | cost / 1,000 | goal (agreement) "
              "| static: agreement, teacher share | controlled: agreement, teacher share, threshold (source) | served agreement | refresh |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
        for r in report["rounds"]:
            target = "-" if r["goal_target"] is None else f"{r['goal_target']:.4f}"
            print(f"| {r['round']} | {r['teacher_share']:.2%} | {r['degraded_share']:.2%} | {r['test_teacher_share']:.2%} | "
                  f"{r['cascade_accuracy']:.4f} | {r['cost_per_1000']:.0f} | {target} | "
                  f"{r['static_agreement']:.4f}, {r['static_teacher_share']:.2%} | "
                  f"{r['controlled_agreement']:.4f}, {r['controlled_teacher_share']:.2%}, {r['controlled_threshold']:.4g} ({r['threshold_source']}) | "
                  f"{r['served_agreement']:.4f} | {r['refresh']} |")
        if report["wrong_classes"] or report["feedback_rate"]:
            print(_feedback_table(report))
        print(f"plot: {args.out}")
    return 0


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


def cmd_models(args: argparse.Namespace) -> int:
    from distill.registry import Registry

    registry = Registry(_home(args) / "registry")
    if args.action == "list":
        for role in ("teacher", "student"):
            current = registry.current(role)
            for meta in registry.versions(role):
                mark = "*" if meta.version == current else " "
                acc = meta.metrics.get("validation_accuracy") or (meta.policy or {}).get("validation", {}).get("student_accuracy")
                print(f"{mark} {role:<8} {meta.version:<32} {meta.kind:<22} parent={meta.parent or '-'} created={meta.created}" + (f" val_acc={acc:.4f}" if acc else ""))
        return 0
    if args.action == "promote":
        if not args.version:
            raise SystemExit("cascade models promote: give the version to promote (see `cascade models list`)")
        registry.promote(args.role, args.version, note="cli")
        print(f"{args.role} now {args.version}")
    else:
        print(f"{args.role} rolled back to {registry.rollback(args.role)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from distill.bootstrap import ensure_goal
    from serving.cli import runner
    from serving.cli.data import config_registry
    from serving.config import load_config

    config = load_config(args.config, home=args.home, port=args.port, host=args.host, data=args.data,
                         text_column=args.text_column, label_column=args.label_column)
    goal = config.routing.goal
    registry = config_registry(config, progress=not args.quiet, goal=goal)
    if config.student.model is None:  # a pinned student version keeps the policy it was pinned with
        ensure_goal(registry, config.home, config.data, goal, config.text_column, config.label_column)
    print(f"starting the cascade (Ray Serve) on {config.host}:{config.port} ...", flush=True)
    url = runner.start(config)
    print(f"cascade serving at {url}\n  classify: POST {url}/v1/classify\n  API docs: {url}/docs\n"
          f"  dashboard: {url}/dashboard\n  Prometheus metrics: http://{config.host}:{config.metrics.port}/metrics "
          f"(Ray names them ray_cascade_*; deploy/prometheus/prometheus.yml stores them as cascade_*)\n"
          f"  escalation log: {config.log_path()}\n"
          + (f"  proxy: HAProxy (Ray Serve's fast path; proxy.kind: serve for Ray's Python proxy), stats at "
             f"http://{config.proxy.admin_host}:{config.proxy.stats_port}/stats\n" if config.proxy.kind == "haproxy"
             else "  proxy: Ray Serve's Python proxy (proxy.kind: haproxy for the fast path)\n")
          + "Ctrl-C stops it.", flush=True)
    stopped = threading.Event()
    # explicit handlers: a shell that starts us in the background sets SIGINT to "ignore"
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    print("stopping ...", flush=True)
    runner.stop()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from serving.cli.bench import markdown_table, run_bench
    from serving.cli.data import config_registry, config_splits
    from serving.config import load_config

    config = load_config(args.config, home=args.home, port=args.port, data=args.data, text_column=args.text_column, label_column=args.label_column)
    # the bench measures capacity: a teacher-only pass queues longer than the serving timeout
    config = config.model_copy(update={"routing": config.routing.model_copy(update={"teacher_timeout_s": 300.0})})
    config_registry(config, progress=not args.quiet)
    split = config_splits(config).get(args.split)
    texts, labels = split.texts[: args.limit or None], split.labels[: args.limit or None]
    say = (lambda _: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.pairs < 0:
        raise ConfigError(f"--pairs must be 0 or more; got {args.pairs}")
    report = run_bench(config, texts, labels, seconds=args.seconds, pairs=args.pairs, both_paths=args.paths == "both", progress=say)
    table = markdown_table(report)
    if args.out:
        args.out.write_text(table + "\n")
    print(json.dumps(report) if args.json else table + "\n\n" + json.dumps(report["checks"]))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from serving.cli.batch import batch

    summary = batch(args)
    print(summary.model_dump_json() if args.json else summary.line())
    for example in summary.bad_examples:
        print(f"  bad row: {example}", file=sys.stderr)
    return 0


def cmd_export_serve_config(args: argparse.Namespace) -> int:
    import shlex

    from serving.config import load_config
    from serving.serve_config import kuberay_options, rayservice, render, serve_config

    if args.set and not args.kuberay:
        raise ConfigError("--set sets KubeRay options: it needs --kuberay")
    if args.check and not args.out:
        raise ConfigError("--check compares with the --out file: give --out")
    config = load_config(args.config)
    document = rayservice(config, kuberay_options(args.set)) if args.kuberay else serve_config(config)
    flags = ["--kuberay"] * args.kuberay + (["--config", str(args.config)] if args.config else [])
    flags += [flag for assignment in args.set for flag in ("--set", assignment)]
    flags += ["--out", str(args.out)] if args.out else []
    regenerate = shlex.join(["cascade", "export-serve-config", *flags])
    text = render(document, regenerate, None if args.kuberay else config.proxy.ray_env())
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is stale: regenerate it with `{regenerate}`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
    elif args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from serving.cli.data import config_registry, config_splits
    from serving.config import load_config
    from serving.cli.soak import soak

    config = load_config(args.config, home=args.home, port=args.port, data=args.data, text_column=args.text_column, label_column=args.label_column)
    texts = config_splits(config).get("test").texts
    url = args.url
    if url is None:
        from serving.cli import runner

        config_registry(config, progress=False)
        print(f"soak: starting the cascade on {config.host}:{config.port} ...", file=sys.stderr, flush=True)
        url = runner.start(config)
    try:
        print(f"soak: {args.clients} clients, {args.batch} text(s) per request, {args.seconds:.0f} s against {url}", file=sys.stderr, flush=True)
        report = soak(url, texts, clients=args.clients, seconds=args.seconds, batch=args.batch)
    finally:
        if args.url is None:
            runner.stop()
    if args.json:
        print(report.model_dump_json())
    else:
        print(f"{report.requests} requests in {report.seconds} s ({report.requests_per_s}/s), errors {report.errors} {report.statuses}\n"
              f"latency p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, max {report.max_ms} ms\n"
              f"items {report.items}, escalated {report.escalated}, degraded {report.degraded or 0}")
    return 1 if report.errors else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; defaults come from the config classes."""
    from distill.config import DEFAULT_GOAL, Mode, RefreshConfig, StudentKind, StudentSpec, TrainConfig, WatchConfig

    parser = argparse.ArgumentParser(prog="cascade", description="Serve a student/teacher cascade and keep distilling the student.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("bootstrap", help="build the embedded teacher and distilled student if missing", description="Build the default teacher (frozen MiniLM + fitted head) and a student distilled from it, unless the registry already has them.")
    _common(p)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("distill", help="train a student from a teacher and register it", description="Distil a student from a teacher's soft labels (or its top labels, or hard labels only) and register it as a new version.")
    _common(p)
    p.add_argument("--teacher", default=None, help="teacher version, model directory or hub id (default: current teacher)")
    p.add_argument("--kind", choices=get_args(StudentKind), default=StudentSpec.kind, help=f"bow: bag of word pieces + MLP (fast on CPU); transformer: k of the teacher's layers (default: {StudentSpec.kind})")
    p.add_argument("--layers", type=_at_least_one, default=StudentSpec.layers, help=f"teacher layers kept by a transformer student (default: {StudentSpec.layers})")
    p.add_argument("--hidden-size", type=int, default=StudentSpec.hidden_size, help=f"MLP width of a bow student (default: {StudentSpec.hidden_size})")
    p.add_argument("--mode", choices=get_args(Mode), default=TrainConfig.mode, help="soft: teacher probabilities; label-only: a black-box teacher's top label; hard: ground truth only")
    p.add_argument("--hard-labels-only", action="store_true", help="same as --mode hard: the no-teacher baseline")
    defaults = TrainConfig()
    p.add_argument("--epochs", type=_at_least_one, default=defaults.epochs, help=f"passes over the data (default: {defaults.epochs})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"rows per step (default: {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    p.add_argument("--temperature", type=float, default=defaults.temperature, help=f"distillation temperature T (default: {defaults.temperature})")
    p.add_argument("--alpha", type=float, default=defaults.alpha, help=f"weight of the teacher term (default: {defaults.alpha})")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"seeds initialisation and shuffling (default: {defaults.seed})")
    p.add_argument("--train-fraction", type=float, default=1.0, help="train on this stratified fraction of the training split (default: 1.0)")
    p.add_argument("--goal", default=DEFAULT_GOAL, help="escalation goal fitted on validation: accuracy>=teacher, accuracy>=0.93, agreement>=0.97, budget<=0.10")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="register without making it current")
    p.add_argument("--out", type=Path, default=None, help="write the student to this directory instead of the registry")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("eval", help="accuracy, calibration and speed of teacher, student and cascade", description="Evaluate teacher, student and the cascade on one split: accuracy, macro-F1, teacher agreement, ECE, worst-class recall, latency and throughput.")
    _common(p)
    p.add_argument("--split", choices=("test", "validation", "train"), default="test")
    p.add_argument("--test-data", default=None, help="a file to use as the test split")
    p.add_argument("--teacher", default=None, help="teacher version, directory or hub id (default: current)")
    p.add_argument("--student", default=None, help="student version, directory or hub id (default: current)")
    p.add_argument("--threshold", type=float, default=None, help="override the student's fitted threshold")
    _cost_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="fit the student's temperature and threshold for a goal; register it", description="Fit temperature scaling and the escalation threshold(s) on the validation split for a goal, register the result as a new student version (weights shared), and report validation and test figures.")
    _common(p)
    p.add_argument("--goal", default=DEFAULT_GOAL, help=f"accuracy>=teacher, accuracy>=0.93, agreement>=0.97 or budget<=0.10 (default: {DEFAULT_GOAL})")
    p.add_argument("--measure", choices=sorted(MEASURES), default=EscalationPolicy.measure, help=f"confidence measure (default: {EscalationPolicy.measure})")
    p.add_argument("--per-class", action="store_true", help="also fit per-class thresholds where they lower escalation on validation")
    p.add_argument("--student", default=None, help="student version (default: current)")
    p.add_argument("--teacher", default=None, help="teacher version, directory or hub id (default: current)")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="register without making it current")
    _cost_flags(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("frontier", help="plot and tabulate cost against accuracy over thresholds", description="For each threshold: escalation rate, cascade accuracy, teacher agreement and cost per 1,000 requests, with student-only, teacher-only and the chosen operating point; a PNG and a Markdown table.")
    _common(p)
    p.add_argument("--out", type=Path, default=Path("frontier.png"), help="PNG to write (default: frontier.png)")
    p.add_argument("--table", type=Path, default=None, help="Markdown table to write (default: beside the PNG, .md)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--points", type=int, default=25, help="thresholds on the curve (default: 25)")
    p.add_argument("--student", default=None, help="student version (default: current)")
    p.add_argument("--teacher", default=None, help="teacher version (default: current)")
    _cost_flags(p)
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("serve", help="serve the cascade over HTTP on Ray Serve", description="Start the cascade (ingress, student, teacher, escalation log) on a local Ray cluster; bootstraps the default models when the registry is empty.")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON file validated as serving.config.CascadeConfig")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000, or the config's)")
    p.add_argument("--host", default=None, help="bind address (default: 127.0.0.1, or the config's)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: $CASCADE_HOME or ./.cascade)")
    p.add_argument("--data", default=None, help="data set to bootstrap the default models from (default: banking77, or the config's)")
    _column_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_serve)

    from serving.cli.batch import add_parser as add_batch_parser

    add_batch_parser(sub)
    sub.choices["batch"].set_defaults(func=cmd_batch)

    p = sub.add_parser("export-serve-config", help="write the Ray Serve config file (or a KubeRay RayService) from a serving config", description="Generate deploy/serve.yaml for `serve run` / `serve deploy`, or with --kuberay a RayService manifest embedding it, from the same serving config `cascade serve --config` takes. The file's first line names the command that regenerates it.")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON file validated as serving.config.CascadeConfig (default: all defaults)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: print)")
    p.add_argument("--kuberay", action="store_true", help="write a KubeRay RayService (ray.io/v1) instead of the Serve config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --kuberay: a serving.serve_config.KubeRayOptions field, e.g. image=registry/distill-cascade:1 (repeatable)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from what would be written")
    p.set_defaults(func=cmd_export_serve_config)

    p = sub.add_parser("bench", help="benchmark teacher-only, student-only, cascade and an echo ceiling over HTTP", description="Start the cascade and an echo deployment on Ray Serve and measure, per service: accuracy over HTTP, teacher share, single-text requests/s and p50/p99 at 1 and 16 clients (wrk if installed), texts/s in 64-text requests with each Serve process's CPU per text, and in-process model-only throughput. The cascade is measured once online control has settled (test-set passes until the live threshold stops moving), and the report bounds cascade/student texts/s from the CPU each used.")
    p.add_argument("--config", type=Path, default=None, help="serving config file (same as cascade serve)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory")
    p.add_argument("--data", default=None, help="data set (default: banking77, or the config's)")
    _column_flags(p)
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--limit", type=int, default=0, help="use only the first N texts (default: all)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each single-text load run (default: 10)")
    p.add_argument("--pairs", type=int, default=6,
                   help="echo/cascade run pairs at 16 clients, in alternating order, whose median ratio is the reported check; "
                        "each run also reports the CPU ms per request of each Serve process (default: 6; 0: none)")
    p.add_argument("--paths", choices=("both", "config"), default="both",
                   help="both: also measure the echo and the cascade on the proxy the config does not choose (HAProxy's fast "
                        "path or Ray Serve's Python proxy), side by side; config: only the config's (default: both)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("soak", help="hold the cascade under steady concurrent load; report errors, p50/p99, degraded items", description="Drive N concurrent clients (one async Python process) against a running cascade (--url) or one started here, for a fixed time; report non-2xx answers and transport errors, latency percentiles and degraded items by cause. Exits 1 if any request failed.")
    p.add_argument("--url", default=None, help="a running cascade (default: start one from --config/--home/--data)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration (default: 60)")
    p.add_argument("--batch", type=int, default=1, help="texts per request (default: 1)")
    p.add_argument("--config", type=Path, default=None, help="serving config file (same as cascade serve)")
    p.add_argument("--port", type=int, default=None, help="HTTP port when starting one (default: 8000)")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory")
    p.add_argument("--data", default=None, help="data set whose test texts are sent (default: banking77, or the config's)")
    _column_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("refresh", help="retrain the student from the escalation log; gate; promote if better", description="One refresh round: escalation records (teacher soft labels) plus a replay of the base training data train a candidate student; it is promoted only if, on the validation split, it is at least as accurate as the current student and meets the goal with no more escalation. The decision is recorded either way; running cascades pick up a promotion within poll_registry_s.")
    _common(p)
    p.add_argument("--log", type=Path, default=None, help="escalation log directory (default: <home>/escalations)")
    p.add_argument("--replay-ratio", type=float, default=RefreshConfig.replay_ratio, help=f"base rows replayed per escalation row (default: {RefreshConfig.replay_ratio})")
    p.add_argument("--margin-floor", type=float, default=RefreshConfig.margin_floor, help="drop records whose teacher top-2 margin is below this (default: 0)")
    p.add_argument("--since", default=None, help="only records at or after this ISO time")
    p.add_argument("--min-records", type=int, default=RefreshConfig.min_records, help="refuse to train on fewer usable records (default: 1)")
    p.add_argument("--from-scratch", action="store_true", help="train from the teacher's embeddings instead of warm-starting from the current student")
    p.add_argument("--epochs", type=_at_least_one, default=None,
                   help=f"training epochs (default: {RefreshConfig().train.epochs} for a warm start, {TrainConfig().epochs} with --from-scratch)")
    p.add_argument("--tolerance", type=float, default=RefreshConfig.tolerance, help="accuracy the gate forgives (default: 0)")
    p.add_argument("--goal", default=DEFAULT_GOAL, help=f"policy goal the gate checks (default: {DEFAULT_GOAL})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="train as a Ray Train job with this many workers (default: 0, in this process)")
    p.add_argument("--feedback", type=Path, default=None,
                   help="outcome feedback log directory (default: <home>/feedback): true labels override the teacher's where they "
                        "disagree, and items the student answered alone become hard-label examples")
    p.add_argument("--feedback-holdout", type=_share, default=None,  # None: distill.refresh.FeedbackSettings' (not imported for --help: torch)
                   help="share of feedback items (by a hash of request id and index) never trained on: the gate reports both students' "
                        "accuracy on them and rejects a candidate significantly worse there; evaluation feedback is always held out "
                        "(default: 0.2)")
    p.add_argument("--shadow", action="store_true",
                   help="a candidate that passes the gate goes into shadow instead of being promoted: the serving replicas judge it on live traffic")
    p.add_argument("--watch", action="store_true", help="keep running: a round every --every-records new records or --every-minutes, whichever first")
    p.add_argument("--every-records", type=_at_least_one, default=WatchConfig.every_records, help=f"with --watch: new records that trigger a round (default: {WatchConfig.every_records})")
    p.add_argument("--every-minutes", type=float, default=WatchConfig.every_minutes, help=f"with --watch: minutes after which new records trigger a round (default: {WatchConfig.every_minutes:g})")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("simulate", help="the refresh loop's story: teacher share falling round after round", description="Distil a seed student on a slice of train, stream the rest of train through the running cascade in rounds, refresh after each, and report per round the teacher's share, the cascade's test accuracy and the cost per 1,000 requests (table, --json, PNG).")
    p.add_argument("--home", type=Path, default=None,
                   help="a registry for the simulation (default: ./.cascade-simulation); each run logs escalations to a fresh "
                        "<home>/simulations/<UTC time>/escalations, so that it learns from its own traffic alone, while the "
                        "home's teacher and cache are reused")
    p.add_argument("--data", default=None, help="data set (default: banking77, or the config's)")
    _column_flags(p)
    p.add_argument("--config", type=Path, default=None, help="serving config file")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of traffic and refresh (default: 5)")
    p.add_argument("--seed-fraction", type=float, default=0.1, help="share of train the seed student is distilled on (default: 0.1)")
    p.add_argument("--goal", default="accuracy>=teacher", help="policy goal of every student in the run (default: accuracy>=teacher)")
    p.add_argument("--no-shadow", action="store_true",
                   help="let the seed student answer from round 1 (default: it starts in shadow, every round-1 item goes to the teacher "
                        "and is logged, since a few hundred rows are too little evidence for a threshold)")
    p.add_argument("--epochs", type=_at_least_one, default=RefreshConfig().train.epochs,
                   help=f"epochs of each refresh round (default: {RefreshConfig().train.epochs}, as cascade refresh)")
    p.add_argument("--teacher-timeout", type=float, default=120.0,
                   help="seconds an escalation waits for the teacher (default: 120: a simulation measures learning, "
                        "so a loaded machine must not turn escalations into degraded answers)")
    p.add_argument("--shift", choices=["none", "typos"], default="none",
                   help="make the traffic differ from validation: typos gives words seeded typos (letters swapped, dropped or "
                        "doubled); the report compares the static threshold's live agreement with the controlled one's (default: none)")
    p.add_argument("--typo-rate", type=float, default=0.2, help="with --shift typos: share of words (3+ characters) given a typo (default: 0.2)")
    p.add_argument("--feedback-rate", type=_share, default=0.0,
                   help="after each round's traffic, send the data set's gold labels of this share of the round's items to POST /v1/feedback "
                        "(the run sets $CASCADE_FEEDBACK_TOKEN for its service); refresh learns from them (default: 0)")
    p.add_argument("--wrong-teacher", default=None, metavar="CLASS[,CLASS...] | COUNT",
                   help="serve a copy of the teacher that is systematically wrong on these classes (at least two; or a count of classes "
                        "drawn with a fixed seed): each one's inputs get the next one's label; the report adds the student's and the "
                        "cascade's recall on them per round, and the home's teacher is restored at the end")
    p.add_argument("--out", type=Path, default=Path("simulation.png"), help="PNG to write (default: simulation.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("models", help="list, promote or roll back registered model versions", description="Inspect the registry and move the current pointer of a role.")
    _common(p, data=False)
    p.add_argument("action", choices=("list", "promote", "rollback"))
    p.add_argument("version", nargs="?", help="version to promote")
    p.add_argument("--role", choices=("student", "teacher"), default="student")
    p.set_defaults(func=cmd_models)
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

