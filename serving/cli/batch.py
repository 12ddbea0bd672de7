"""``cascade batch``: the cascade over a data set on Ray Data (``serving.bulk``), with the served
cascade's models, threshold, costs and escalation log: the serving config (``--config``) and the
admin's threshold in the registry decide as they do for served traffic."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from router import TeacherBudget, parse_goal
from serving.bulk import (BulkError, BulkJob, BulkSettings, BulkSummary, Certification, InputPlan, OutputDir, certify_on_sample, plan_input,
                          run_bulk, sample_texts)
from distill.escalations import EscalationRecord
from distill.metadata import read_meta
from serving.remote import model_labels
from router.policy import threshold_in_force
from serving.cli.args import at_least_one
from serving.config import CascadeConfig, load_config


def _version(path: str) -> str:
    meta = read_meta(Path(path))
    return meta.version if meta else Path(path).name


def job_threshold(config: CascadeConfig, student: str, teacher: str, plan: InputPlan, certify_rows: int,
                  progress: bool) -> tuple[float | None, Certification | None]:
    """The threshold a bulk job runs at, in served traffic's order (``router.policy.threshold_in_force``):
    the admin's; else online control's live one once control has stepped on evidence for this
    student (its start-up point sends every item to the teacher until the evidence allows
    less); else the config's; else, with online control on (``routing.control``, audits) and
    ``certify_rows``, the threshold certified for the goal on a sample of the input the teacher
    labels first (``serving.bulk.certify_on_sample``); else None, the student's fitted one."""
    from serving.compose import open_routing, open_state
    from serving.live import read_live_status

    paths, routing = config.paths(), config.routing
    controlled = routing.control and routing.audit_rate > 0
    live = read_live_status(open_state(paths)) if controlled else None
    stepped = live if live is not None and live.student == _version(student) and live.updated_at is not None else None
    threshold, source = threshold_in_force(open_routing(paths).read(fresh=True).threshold, stepped and stepped.threshold, routing.threshold)
    if source == "live":
        return threshold, Certification(source="live", goal=stepped.goal, threshold=threshold, bound=stepped.bound,
                                        target=stepped.target, held=bool(stepped.held))
    if source != "fitted" or not controlled or certify_rows <= 0 or isinstance(parse_goal(routing.goal), TeacherBudget):
        return threshold, None
    from distill.backends import HFClassifier

    texts = sample_texts(plan, certify_rows)
    if progress:
        print(f"cascade batch: the teacher labels {len(texts)} sampled rows to certify the threshold for {routing.goal}",
              file=sys.stderr, flush=True)
    certification = certify_on_sample(HFClassifier.load(student), HFClassifier.load(teacher), texts, routing.goal)
    return certification.threshold, certification


def batch(args: argparse.Namespace) -> BulkSummary:
    """Run ``cascade batch`` from its parsed arguments; returns the run's summary."""
    from serving.compose import escalation_writer, open_registry
    from serving.redaction import load_redactor

    started = time.monotonic()
    config = load_config(args.config, home=args.home)
    try:
        settings = BulkSettings(rows_per_batch=args.rows_per_batch, rows_per_part=args.rows_per_part, student_actors=args.student_actors, teacher_actors=args.teacher_actors,
                                teacher_cpus=args.teacher_cpus, num_gpus=args.teacher_gpus)
    except ValidationError as err:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
        raise BulkError(f"invalid settings: {problems}") from None
    if config.teacher.remote is not None:
        raise BulkError("cascade batch runs registry models; the config's teacher is a remote endpoint")
    registry = open_registry(config.paths())
    student = registry.resolve("student", args.student or config.student.model)
    teacher = registry.resolve("teacher", args.teacher or config.teacher.model)
    if model_labels(student) != model_labels(teacher):
        raise BulkError(f"student {student} and teacher {teacher} have different label lists: use a matching pair")
    plan = plan_input(args.input, args.text_column)
    out = OutputDir(args.output)
    threshold, certification = args.threshold, None
    if args.threshold is None and not out.resumable(args.overwrite):
        threshold, certification = job_threshold(config, student, teacher, plan, 0 if args.no_certify else args.certify_rows, not args.quiet)
    job, resumed = out.start(BulkJob(input=plan.uri, text_column=plan.text_column, student=student, teacher=teacher,
                                     student_version=_version(student), teacher_version=_version(teacher), threshold=threshold,
                                     certification=certification), args.overwrite)
    asked = {"student_version": args.student and _version(student), "teacher_version": args.teacher and _version(teacher), "threshold": args.threshold}
    if resumed and (changed := [f"{k} {getattr(job, k)!r}" for k, v in asked.items() if v is not None and v != getattr(job, k)]):
        raise BulkError(f"output {args.output} holds an unfinished job started with {', '.join(changed)}: run it again without "
                        "other models or threshold to finish it, or pass --overwrite")
    if resumed:
        print(f"cascade batch: resuming the unfinished job in {args.output} (student {job.student_version}, teacher {job.teacher_version})",
              file=sys.stderr, flush=True)
    if args.log:
        config = config.model_copy(update={"log": config.log.model_copy(update={"path": str(args.log)})})
    log = escalation_writer(config)
    redact = load_redactor(config.log.redact)

    def write_records(records: list[EscalationRecord]) -> None:
        log.append([r.model_copy(update={"text": redact(r.text)}) for r in records] if redact else records)

    import ray

    started_ray = not ray.is_initialized()  # a caller (a test) may have connected already
    if started_ray and args.address:
        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    elif started_ray:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return run_bulk(plan, out, job, config.routing.costs(), settings, write_records, started, progress=not args.quiet)
    finally:
        log.close()
        if started_ray:
            ray.shutdown()


def add_parser(sub) -> None:
    """The ``batch`` subcommand's arguments."""
    defaults = BulkSettings()
    p = sub.add_parser("batch", help="label a data set with the cascade, on Ray Data",
                       description="Run the cascade over CSV, JSONL or Parquet files (a file, a directory, or a URI) as a Ray Data pipeline: "
                                   "the student on every row, the teacher on the rows it is unsure of, the served cascade's versions, "
                                   "policy and threshold. Writes Parquet (the input's columns plus label, score, tier, escalated, "
                                   "confidence, cost, versions, error, source_file, source_row) and logs escalations like served ones. "
                                   "Run again after a crash: rows already written are skipped.")
    p.add_argument("--input", required=True, help="a .csv, .jsonl or .parquet file, a directory of them, or a URI (s3://..., gs://...)")
    p.add_argument("--output", required=True, help="a directory (or URI) for the Parquet parts; refused if it exists, unless it holds this job unfinished")
    p.add_argument("--overwrite", action="store_true", help="delete an existing --output first")
    p.add_argument("--text-column", default=None, help="the column to classify (default: guessed: text, sentence, query, ...)")
    p.add_argument("--config", type=Path, default=None, help="serving config (same as cascade serve): models, threshold, costs, log")
    p.add_argument("--home", type=Path, default=None, help="registry and cache directory (default: $CASCADE_HOME or ./.cascade)")
    p.add_argument("--student", default=None, help="student version or directory (default: the config's, else current)")
    p.add_argument("--teacher", default=None, help="teacher version or directory (default: the config's, else current)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the threshold (default: as served: the admin's, online control's live one, the config's; "
                        "else certified for the goal on a sample of the input the teacher labels first, see --certify-rows)")
    p.add_argument("--certify-rows", type=at_least_one, default=500,
                   help="rows sampled from the input for the teacher to label, to certify the threshold when no live evidence "
                        "or set threshold decides it (default: 500)")
    p.add_argument("--no-certify", action="store_true", help="run at the student's fitted threshold when nothing else sets one")
    p.add_argument("--log", type=Path, default=None, help="escalation log directory (default: the config's, <home>/escalations)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: start one here")
    p.add_argument("--num-cpus", type=at_least_one, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--rows-per-batch", type=at_least_one, default=defaults.rows_per_batch, help=f"rows per model call (default: {defaults.rows_per_batch})")
    p.add_argument("--rows-per-part", type=at_least_one, default=defaults.rows_per_part,
                   help=f"rows per output part, the most a crash loses (default: {defaults.rows_per_part})")
    p.add_argument("--student-actors", type=at_least_one, default=defaults.student_actors, help=f"most student actors (default: {defaults.student_actors})")
    p.add_argument("--teacher-actors", type=at_least_one, default=defaults.teacher_actors, help=f"most teacher actors (default: {defaults.teacher_actors})")
    p.add_argument("--teacher-cpus", type=float, default=defaults.teacher_cpus, help=f"CPUs per teacher actor (default: {defaults.teacher_cpus:g})")
    p.add_argument("--teacher-gpus", type=float, default=defaults.num_gpus, help="GPUs per teacher actor (default: 0)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
