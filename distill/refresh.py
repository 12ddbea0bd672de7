"""One round of the refresh loop: escalation log -> training set -> candidate student -> gate
-> registered (and, if it passes, promoted) version; the lock that keeps rounds one at a time,
and ``watch``, which runs a round whenever enough new records arrived.

1. Build the training set (``distill.refresh_data``): escalation and audit records (the
   teacher's soft labels), filtered and deduplicated, a replay sample of the base training
   split against forgetting, and outcome feedback as hard labels; a held-out share of the
   feedback is never trained on, and the gate measures with it.
2. Train a candidate, warm-started from the current student (or from scratch). When records
   come from a black-box teacher that gave labels alone (``teacher_label_only``), the round
   trains label-only (the teacher's top label, ``losses.label_only_loss``) instead of soft.
3. Gate (``distill.gate``) on the validation split, which no training run sees, and on the
   held-out feedback: the candidate must be about as accurate as the current student, reach
   the goal with no more escalation, and not be worse on held-out feedback beyond a sign test's
   bound.
4. Register the candidate either way, with the decision and its figures; promote it only if
   it passed, or with ``shadow`` put it in shadow (``Registry.start_shadow``) so the serving
   replicas judge it on live traffic. Every decision is appended to the registry's history.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from distill.backends import HFClassifier
from distill.config import RefreshConfig, StudentSpec, WatchConfig
from distill.data import DataSplits
from distill.errors import DistillError, RegistryError
from distill.files import file_lock
from distill.settings import Paths
from distill.escalations import LogTail, read_records
from distill.feedback import FeedbackRecord, read_feedback
from distill.gate import GateDecision, gate
from distill.metadata import ModelMeta
from distill.pipeline import TeacherCache, data_record, new_student, register_model
from distill.refresh_data import FeedbackSettings, build_dataset, text_key
from distill.registry import Registry, new_version_id
from distill.train import train_student


def refresh(registry: Registry, home: Path, splits: DataSplits, log_dir: Path, config: RefreshConfig, data_spec: str, progress: bool = True,
            feedback: Iterable[FeedbackRecord] | None = None, feedback_settings: FeedbackSettings = FeedbackSettings(),
            shadow: bool = False) -> dict:
    """One refresh round; returns its report (decision, figures, data stats, versions).
    ``feedback``: the outcome feedback to use (None: the home's feedback log). ``shadow``: a
    candidate that passes the gate goes into shadow instead of being promoted."""
    teacher = HFClassifier.load(registry.current_path("teacher"))
    current = HFClassifier.load(registry.current_path("student"))
    cache = TeacherCache(Paths.under(home).cache)
    feedback = list(read_feedback(Paths.under(home).feedback).values() if feedback is None else feedback)
    unasked = list({text_key(f.text): f.text for f in feedback if f.teacher_label is None}.values())  # the student answered alone
    asked = {text_key(t): teacher.labels[i] for t, i in zip(unasked, teacher.predict_proba(unasked).argmax(1))} if unasked else {}
    data = build_dataset(read_records(log_dir), splits, cache.log_probs(teacher, splits.train), teacher.labels, config, config.train.seed,
                         feedback, feedback_settings, asked)
    train_config = config.train
    if data.stats["label_only_rows"] and train_config.mode == "soft":
        # a black-box teacher's records hold its label alone (one-hot rows), not soft labels: learn them as labels
        train_config = replace(train_config, mode="label-only")
    if config.warm_start:
        model, tokenizer = copy.deepcopy(current.model), current.tokenizer
    else:  # a fresh student of the current one's kind and size
        known = current.meta.train_config if current.meta else {}
        spec = StudentSpec(kind=known.get("kind", "bow"), layers=known.get("layers", 2),
                           hidden_size=known.get("hidden_size", 512), train=train_config)
        model, tokenizer = new_student(teacher, spec)
    if config.workers:
        from distill.distributed import train_on_ray

        metrics = train_on_ray(model, tokenizer, data.texts, data.labels, data.teacher_log_probs, data.weights,
                               train_config, config.workers, home / "ray-train")
    else:
        metrics = train_student(model, tokenizer, data.texts, data.labels, data.teacher_log_probs, train_config, data.weights, progress)
    candidate = HFClassifier(model, tokenizer, version="candidate", max_length=train_config.max_length)
    decision, policy = gate(candidate, current, teacher, splits, cache, config.goal, config.tolerance, data.holdout, feedback_settings.significance)
    meta = ModelMeta(
        version=new_version_id("student"), role="student", kind=current.meta.kind if current.meta else "student",
        parent=current.version, teacher=teacher.version, data=data_record(data_spec, splits) | {"refresh": data.stats},
        train_config={**(current.meta.train_config if current.meta else {}), **asdict(train_config), "warm_start": config.warm_start},
        metrics=metrics | {"gate": decision.figures, "gate_passed": decision.promote},
        policy=policy.to_dict(),
    )
    register_model(registry, candidate, meta, promote=False)
    shadowed = False
    if decision.promote and shadow:
        shadowed, reason = _start_shadow(registry, meta.version, current.version)
        decision = GateDecision(promote=False, reasons=[reason], figures=decision.figures)
    elif decision.promote:
        try:  # only over the student it was gated against: a rollback meanwhile wins
            registry.promote("student", meta.version, note="refresh gate passed", expected_current=current.version)
        except RegistryError as err:
            decision = GateDecision(promote=False, reasons=[str(err)], figures=decision.figures)
    registry.record("student", {"event": "gate", "version": meta.version, "promoted": decision.promote, "shadow": shadowed,
                               "reasons": decision.reasons, **decision.figures, "escalation_rows": data.stats["escalation_rows"],
                               "dropped": data.stats["dropped"], "feedback": data.stats["feedback"]})
    return {"version": meta.version, "parent": current.version, "promoted": decision.promote, "shadow": shadowed,
            "reasons": decision.reasons, "figures": decision.figures, "data": data.stats, "train_seconds": metrics["train_seconds"]}


def _start_shadow(registry: Registry, version: str, gated_against: str) -> tuple[bool, str]:
    """Put a candidate that passed the gate in shadow against the student it was gated against
    (a pointer moved meanwhile, by a rollback, wins); whether it did, and why."""
    try:
        moved_to = registry.current("student")
        if moved_to != gated_against:
            raise RegistryError(f"student moved from {gated_against} to {moved_to} meanwhile; not shadowing {version}")
        registry.start_shadow("student", version, note="refresh gate passed; judged on live traffic")
    except RegistryError as err:
        return False, str(err)
    return True, "passed; in shadow"


@contextmanager
def refresh_lock(home: Path) -> Iterator[None]:
    """Hold ``<home>/refresh.lock`` for one round: a second refresh fails at once instead of
    training beside the first."""
    try:
        with file_lock(home / "refresh.lock", wait=False):
            yield
    except BlockingIOError:
        raise RegistryError(f"another refresh is running (lock {home / 'refresh.lock'})") from None


@contextmanager
def failures_recorded(registry: Registry) -> Iterator[None]:
    """Record a refresh round that raises as a ``refresh_failed`` event in the student's
    history (where monitoring counts rounds by outcome), then let the error go on."""
    try:
        yield
    except Exception as err:
        registry.record("student", {"event": "refresh_failed", "error": f"{type(err).__name__}: {err}"})
        raise


def watch(
    registry: Registry, home: Path, splits: DataSplits, log_dir: Path, config: RefreshConfig, data_spec: str,
    schedule: WatchConfig, max_rounds: int | None = None, on_round: Callable[[dict], None] = print,
    feedback_log: Path | None = None, feedback_settings: FeedbackSettings = FeedbackSettings(), shadow: bool = False,
) -> None:
    """Refresh whenever ``schedule.every_records`` new records arrived or ``schedule.every_minutes``
    passed with at least ``config.min_records`` new ones, whichever comes first; one round at a
    time. Each poll reads only what was appended since the last one. Each round reads the
    feedback log (``feedback_log``, default the home's) whole: a label may change any time."""
    tail = LogTail(log_dir)
    for _ in tail.new_records():  # records already there are not new
        pass
    new, last, rounds = 0, time.monotonic(), 0
    while max_rounds is None or rounds < max_rounds:
        time.sleep(schedule.poll_s)
        new += sum(1 for _ in tail.new_records())
        waited = time.monotonic() - last >= schedule.every_minutes * 60
        if not (new >= schedule.every_records or (waited and new >= config.min_records)):
            continue
        try:
            with refresh_lock(home), failures_recorded(registry):
                feedback = read_feedback(feedback_log).values() if feedback_log else None
                on_round(refresh(registry, home, splits, log_dir, config, data_spec, progress=False, feedback=feedback,
                                 feedback_settings=feedback_settings, shadow=shadow))
        except DistillError as err:  # one failed round (too few usable records, a moved pointer) does not end the watch
            on_round({"error": str(err)})
        new, last, rounds = 0, time.monotonic(), rounds + 1
