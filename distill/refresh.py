"""One round of the refresh loop: escalation log -> training set -> candidate student -> gate
-> registered (and, if it passes, promoted) version.

1. Build the training set: escalation and audit records (the teacher's soft labels, no ground
   truth), deduplicated by id and by text, inside a time window, minus teacher labels whose
   top-2 margin is under a floor (noise), and minus every text of a known split (train, the
   gate's validation split, test): evaluation traffic sent through the service must neither
   feed the gate's own evidence back to it nor leak test answers into training. Plus a replay
   sample of the base training split (ground truth and cached teacher outputs) against
   forgetting. Escalations are a biased sample of hard inputs, so their total weight is capped.
2. Train a candidate, warm-started from the current student (or from scratch). When records
   come from a black-box teacher that gave labels alone (``teacher_label_only``), the round
   trains label-only (the teacher's top label, ``losses.label_only_loss``) instead of soft.
3. Gate on the validation split, which no training run sees: the candidate must be at least
   as accurate as the current student (minus a tolerance) and, at its freshly fitted policy,
   reach the goal with no more escalation than the current student's policy.
4. Register the candidate either way, with the decision and its figures; promote it only if
   it passed. Every decision is appended to the registry's history.
"""

from __future__ import annotations

import copy
import fcntl
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from distill.backends import HFClassifier
from distill.config import RefreshConfig, StudentSpec, WatchConfig
from distill.data import DataSplits
from distill.errors import DataError, DistillError, RegistryError
from distill.escalations import EscalationRecord, LogTail, read_records
from distill.losses import IGNORE
from distill.metadata import ModelMeta, escalation_policy
from distill.pipeline import TeacherCache, data_record, new_student, register_model
from distill.registry import Registry, new_version_id
from distill.train import train_student
from router import EscalationPolicy, fit_policy


@dataclass
class RefreshData:
    """A training set ready for ``train_student``."""

    texts: list[str]
    labels: np.ndarray  # IGNORE where there is no ground truth
    teacher_log_probs: np.ndarray
    weights: np.ndarray
    stats: dict


def _parse_since(text: str | None) -> datetime | None:
    """``--since`` as an aware datetime (a date or time without zone means UTC)."""
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError as err:
        raise DataError(f"--since: expected an ISO date or time such as 2026-11-24T08:00, got {text!r}") from err
    return since if since.tzinfo else since.replace(tzinfo=timezone.utc)


def _margin(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def known_splits(splits: DataSplits) -> dict[str, set[str]]:
    """The texts refresh never learns from, by drop reason: every split it knows of."""
    known = {"in_train_split": set(splits.train.texts), "in_validation_split": set(splits.validation.texts)}
    if splits.test is not None:
        known["in_test_split"] = set(splits.test.texts)
    return known


def select_records(records: list[EscalationRecord], known: dict[str, set[str]], config: RefreshConfig) -> tuple[list[EscalationRecord], dict]:
    """Records to learn from: in the window, deduplicated by id and text, not a text of a known
    split (``known``: drop reason -> texts, exact match), and above the margin floor. Returns
    them and the count dropped for each reason."""
    since = _parse_since(config.since)
    kept, seen_ids, seen_texts = [], set(), set()
    dropped = {"outside_window": 0, "duplicate": 0, **{reason: 0 for reason in known}, "low_margin": 0}
    for record in records:
        if since is not None and datetime.fromisoformat(record.time) < since:
            dropped["outside_window"] += 1
            continue
        key = record.text.strip().lower()
        if record.id in seen_ids or key in seen_texts:
            dropped["duplicate"] += 1
            continue
        seen_ids.add(record.id)
        seen_texts.add(key)
        reason = next((reason for reason, texts in known.items() if record.text in texts), None)
        if reason is not None:
            dropped[reason] += 1
            continue
        if _margin(np.array([record.teacher_probs]))[0] < config.margin_floor:
            dropped["low_margin"] += 1
            continue
        kept.append(record)
    return kept, dropped


def build_dataset(records: list[EscalationRecord], splits: DataSplits, base_log_probs: np.ndarray, label_names: list[str], config: RefreshConfig, seed: int = 0) -> RefreshData:
    """Escalation records plus a replay sample of the base split, weighted (see module docstring)."""
    kept, dropped = select_records(records, known_splits(splits), config)
    if len(kept) < config.min_records:
        raise DataError(f"{len(kept)} usable escalation record(s), need at least {config.min_records} (dropped: {dropped})")
    if any(len(r.teacher_probs) != len(label_names) for r in kept):
        raise DataError(f"escalation records have teacher probabilities over a different label count than the model's {len(label_names)}")
    rng = np.random.default_rng(seed)
    n_replay = min(len(splits.train), max(config.min_replay, int(round(config.replay_ratio * len(kept)))))
    replay = np.sort(rng.choice(len(splits.train), size=n_replay, replace=False))
    escalation_log_probs = np.log(np.clip(np.array([r.teacher_probs for r in kept], dtype=np.float32), 1e-12, 1.0))
    texts = [r.text for r in kept] + [splits.train.texts[i] for i in replay]
    labels = np.concatenate([np.full(len(kept), IGNORE), splits.train.label_ids(label_names)[replay]])
    log_probs = np.concatenate([escalation_log_probs, base_log_probs[replay]])
    # cap the escalations' share of the loss weight: they are a biased sample of hard inputs
    share = len(kept) / len(texts)
    escalation_weight = min(1.0, config.max_escalation_weight / (1 - config.max_escalation_weight) * n_replay / len(kept)) if share > config.max_escalation_weight else 1.0
    weights = np.concatenate([np.full(len(kept), escalation_weight), np.ones(n_replay)]).astype(np.float32)
    stats = {"escalation_rows": len(kept), "replay_rows": int(n_replay), "escalation_weight": round(escalation_weight, 4),
             "audit_rows": sum(r.reason == "audit" for r in kept), "label_only_rows": sum(r.teacher_label_only for r in kept),
             "teacher_versions": sorted({r.teacher_version for r in kept}), "dropped": dropped}
    return RefreshData(texts, labels, log_probs, weights, stats)


@dataclass
class GateDecision:
    """Whether a candidate replaces the current student, and the figures behind it."""

    promote: bool
    reasons: list[str]
    figures: dict


def gate(candidate: HFClassifier, current: HFClassifier, teacher: HFClassifier, splits: DataSplits, cache: TeacherCache, goal: str, tolerance: float) -> tuple[GateDecision, EscalationPolicy]:
    """Compare candidate and current student on the validation split (see module docstring)."""
    data = splits.validation
    labels = data.label_ids(teacher.labels)
    teacher_probs = np.exp(cache.log_probs(teacher, data))
    candidate_probs, current_probs = candidate.predict_proba(data.texts), current.predict_proba(data.texts)
    candidate_policy = fit_policy(candidate_probs, teacher_probs, labels, goal)
    # a current student without a fitted policy (a foreign model) is judged at the policy it would get
    current_policy = escalation_policy(current.meta) if current.meta and current.meta.policy else fit_policy(current_probs, teacher_probs, labels, goal)
    figures = {
        "candidate_accuracy": round(float(np.mean(candidate_probs.argmax(1) == labels)), 4),
        "current_accuracy": round(float(np.mean(current_probs.argmax(1) == labels)), 4),
        "candidate_escalation": round(float(candidate_policy.escalate_mask(candidate_probs).mean()), 4),
        "current_escalation": round(float(current_policy.escalate_mask(current_probs).mean()), 4),
        "goal": goal,
        "tolerance": tolerance,
    }
    reasons = []
    if figures["candidate_accuracy"] < figures["current_accuracy"] - tolerance:
        reasons.append(f"accuracy {figures['candidate_accuracy']:.4f} < current {figures['current_accuracy']:.4f} - {tolerance}")
    if "unreachable" in candidate_policy.goal:
        reasons.append(f"the goal '{goal}' is unreachable for the candidate")
    if figures["candidate_escalation"] > figures["current_escalation"]:
        reasons.append(f"escalation {figures['candidate_escalation']:.4f} > current {figures['current_escalation']:.4f}")
    return GateDecision(promote=not reasons, reasons=reasons or ["passed"], figures=figures), candidate_policy


def refresh(registry: Registry, home: Path, splits: DataSplits, log_dir: Path, config: RefreshConfig, data_spec: str, progress: bool = True) -> dict:
    """One refresh round; returns its report (decision, figures, data stats, versions)."""
    teacher = HFClassifier.load(registry.current_path("teacher"))
    current = HFClassifier.load(registry.current_path("student"))
    cache = TeacherCache(home / "cache")
    data = build_dataset(read_records(log_dir), splits, cache.log_probs(teacher, splits.train), teacher.labels, config, config.train.seed)
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
    decision, policy = gate(candidate, current, teacher, splits, cache, config.goal, config.tolerance)
    meta = ModelMeta(
        version=new_version_id("student"), role="student", kind=current.meta.kind if current.meta else "student",
        parent=current.version, teacher=teacher.version, data=data_record(data_spec, splits) | {"refresh": data.stats},
        train_config={**(current.meta.train_config if current.meta else {}), **asdict(train_config), "warm_start": config.warm_start},
        metrics=metrics | {"gate": decision.figures, "gate_passed": decision.promote},
        policy=policy.to_dict(),
    )
    register_model(registry, candidate, meta, promote=False)
    if decision.promote:
        try:  # only over the student it was gated against: a rollback meanwhile wins
            registry.promote("student", meta.version, note="refresh gate passed", expected_current=current.version)
        except RegistryError as err:
            decision = GateDecision(promote=False, reasons=[str(err)], figures=decision.figures)
    registry.record("student", {"event": "gate", "version": meta.version, "promoted": decision.promote, "reasons": decision.reasons,
                               **decision.figures, "escalation_rows": data.stats["escalation_rows"], "dropped": data.stats["dropped"]})
    return {"version": meta.version, "parent": current.version, "promoted": decision.promote, "reasons": decision.reasons,
            "figures": decision.figures, "data": data.stats, "train_seconds": metrics["train_seconds"]}


@contextmanager
def refresh_lock(home: Path) -> Iterator[None]:
    """Hold ``<home>/refresh.lock`` for one round: a second refresh fails at once instead of
    training beside the first."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "refresh.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RegistryError(f"another refresh is running (lock {home / 'refresh.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
) -> None:
    """Refresh whenever ``schedule.every_records`` new records arrived or ``schedule.every_minutes``
    passed with at least ``config.min_records`` new ones, whichever comes first; one round at a
    time. Each poll reads only what was appended since the last one."""
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
                on_round(refresh(registry, home, splits, log_dir, config, data_spec, progress=False))
        except DistillError as err:  # one failed round (too few usable records, a moved pointer) does not end the watch
            on_round({"error": str(err)})
        new, last, rounds = 0, time.monotonic(), rounds + 1
