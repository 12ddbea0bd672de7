"""The training set of a refresh round (``distill.refresh``): escalation log, replay and outcome
feedback -> texts, targets and weights, and the feedback held out for the gate.

Escalation and audit records (the teacher's soft labels, no ground truth), deduplicated by id
and by text, inside a time window, minus teacher labels whose top-2 margin is under a floor
(noise), and minus every text of a known split (train, the gate's validation split, test):
evaluation traffic sent through the service must neither feed the gate's own evidence back to
it nor leak test answers into training. Plus a replay sample of the base training split (ground
truth and cached teacher outputs) against forgetting. Escalations are a biased sample of hard
inputs, so their total weight is capped.

Outcome feedback (``distill.feedback``: a client's true label of an answered item) joins as
hard labels mixed with the teacher's soft ones: a feedback item whose text is also an
escalation record keeps the teacher's soft label where the two agree and gets the true label's
one-hot as its target where they disagree (the feedback overrides the teacher); one the student
answered alone becomes a one-hot example. A one-hot target is what a teacher certain of the
label would give, so every trainer (in process, Ray Train, label-only) learns it unchanged.
Feedback rows are ground truth, not a biased guess: they weigh as a replayed base row, outside
the escalations' cap. Never trained on: evaluation feedback, feedback on a text of a known
split, and a held-out share of feedback items (by a hash of the request id and index, so an
item stays on its side in every round), which the gate (``distill.gate``) measures with
instead; escalation records of held-out texts are dropped too. Feedback also shows where the
teacher is systematically wrong: a label the teacher gives that the feedback shows wrong more
often than right (one-sided sign test) is distrusted, so the escalation records where the
teacher gave it are dropped and replayed base rows where it gave it learn their own ground
truth instead (else the many records of a class the teacher gets wrong outvote the few
feedback labels that correct it, round after round).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Sequence

import numpy as np

from distill.config import RefreshConfig
from distill.data import DataSplits
from distill.errors import DataError
from distill.escalations import EscalationRecord
from distill.feedback import FeedbackRecord
from distill.losses import IGNORE
from distill.sign_test import sign_test_p


@dataclass(frozen=True)
class FeedbackSettings:
    """How a refresh round learns from outcome feedback and measures with it."""

    holdout_share: float = 0.2  # share of feedback items never trained on (by a hash of request id and index): the gate measures with them
    weight: float = 1.0  # loss weight of a feedback row (a replayed base row weighs 1)
    significance: float = 0.05  # the gate rejects a candidate worse on held-out feedback at this one-sided level (paired sign test)
    distrust_significance: float = 0.05  # a teacher label shown wrong more often than right at this one-sided level is distrusted


@dataclass
class RefreshData:
    """A training set ready for ``train_student``, and the feedback held out for the gate."""

    texts: list[str]
    labels: np.ndarray  # IGNORE where there is no ground truth
    teacher_log_probs: np.ndarray
    weights: np.ndarray
    stats: dict
    holdout: list[FeedbackRecord] = field(default_factory=list)


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


def text_key(text: str) -> str:
    """Texts that differ only in case and surrounding space are one text."""
    return text.strip().lower()


def held_out(record: FeedbackRecord, share: float) -> bool:
    """Feedback never trained on: evaluation traffic, and the items whose request id and index
    hash under ``share`` (deterministic, so an item stays held out in every round; by item, not
    by request, since one request may carry a whole batch of unrelated texts)."""
    digest = hashlib.sha256(f"{record.request_id}:{record.index}".encode()).digest()
    return record.evaluation or int.from_bytes(digest[:8], "big") / 2**64 < share


def split_feedback(feedback: Iterable[FeedbackRecord], known: dict[str, set[str]], label_names: Sequence[str],
                   settings: FeedbackSettings) -> tuple[dict[str, FeedbackRecord], list[FeedbackRecord], dict]:
    """Feedback to train on (by text key; the latest label of a text wins), feedback held out
    for the gate (evaluation feedback and the held-out share), and the count of each fate.
    Never trained on besides: a text of a known split (``known``, as for escalation records),
    a text that is also held out, and a label the models do not know."""
    records = sorted(feedback, key=lambda r: r.time)
    holdout = [r for r in records if held_out(r, settings.holdout_share)]
    holdout_texts = {text_key(r.text) for r in holdout}
    counts = {"items": len(records), "evaluation": sum(r.evaluation for r in holdout),
              "held_out": sum(not r.evaluation for r in holdout), **{reason: 0 for reason in known},
              "in_feedback_holdout": 0, "unknown_label": 0, "duplicate": 0}
    train: dict[str, FeedbackRecord] = {}
    for record in records:
        if held_out(record, settings.holdout_share):
            continue
        reason = next((reason for reason, texts in known.items() if record.text in texts), None)
        if reason is None and text_key(record.text) in holdout_texts:
            reason = "in_feedback_holdout"
        elif reason is None and record.label not in label_names:
            reason = "unknown_label"
        elif reason is None and text_key(record.text) in train:
            reason = "duplicate"  # the later record of the text replaces the earlier one
        if reason is not None:
            counts[reason] += 1
        if reason in (None, "duplicate"):
            train[text_key(record.text)] = record
    return train, holdout, counts


def distrusted_labels(truth: Sequence[str], said: Sequence[str | None], significance: float) -> dict[str, dict]:
    """Teacher labels the feedback shows wrong more often than right: for each label the teacher
    gave (``said``, None where unknown), the items and how many of them had it as their true
    label (``truth``), kept where a one-sided sign test rejects "right at least half the time"."""
    given: dict[str, list[int]] = {}
    for true, label in zip(truth, said):
        if label is not None:
            given.setdefault(label, [0, 0])[true == label] += 1
    return {label: {"items": wrong + right, "agreed": right} for label, (wrong, right) in sorted(given.items())
            if sign_test_p(wrong, right) < significance}


def _one_hot_log_probs(label_ids: np.ndarray, n_labels: int) -> np.ndarray:
    """Log-probabilities of a teacher certain of each label (floored at 1e-12, as logged ones are)."""
    rows = np.full((len(label_ids), n_labels), np.log(1e-12), dtype=np.float32)
    rows[np.arange(len(label_ids)), label_ids] = 0.0
    return rows


def build_dataset(records: list[EscalationRecord], splits: DataSplits, base_log_probs: np.ndarray, label_names: list[str], config: RefreshConfig,
                  seed: int = 0, feedback: Iterable[FeedbackRecord] = (), feedback_settings: FeedbackSettings = FeedbackSettings(),
                  teacher_labels: Mapping[str, str] | None = None) -> RefreshData:
    """Escalation records, feedback and a replay sample of the base split, weighted (see module
    docstring). ``teacher_labels``: the teacher's label of feedback texts (by ``text_key``) whose
    records do not name one (the student answered them alone)."""
    known = known_splits(splits)
    train_feedback, holdout, feedback_counts = split_feedback(feedback, known, label_names, feedback_settings)
    kept, dropped = select_records(records, known | {"in_feedback_holdout": {r.text for r in holdout}}, config)
    index = {name: i for i, name in enumerate(label_names)}
    plain = [r for r in kept if text_key(r.text) not in train_feedback]
    joined = [r for r in kept if text_key(r.text) in train_feedback]
    joined_keys = {text_key(r.text) for r in joined}
    alone = [f for key, f in train_feedback.items() if key not in joined_keys]  # no escalation record: mostly the student's answers
    if len(kept) + len(alone) < config.min_records:
        raise DataError(f"{len(kept)} usable escalation record(s) and {len(alone)} feedback item(s) without one, need at least "
                        f"{config.min_records} (dropped: {dropped}; feedback: {feedback_counts})")
    if any(len(r.teacher_probs) != len(label_names) for r in kept):
        raise DataError(f"escalation records have teacher probabilities over a different label count than the model's {len(label_names)}")
    # the teacher's label of each feedback item: from its escalation record, its feedback record, or asked
    said = [label_names[int(np.argmax(r.teacher_probs))] for r in joined]
    said += [f.teacher_label or (teacher_labels or {}).get(text_key(f.text)) for f in alone]
    truth = [train_feedback[text_key(r.text)].label for r in joined] + [f.label for f in alone]
    distrusted = distrusted_labels(truth, said, feedback_settings.distrust_significance)
    distrusted_ids = [index[label] for label in distrusted]
    dropped["distrusted_teacher_label"] = sum(int(np.argmax(r.teacher_probs)) in distrusted_ids for r in plain)
    plain = [r for r in plain if int(np.argmax(r.teacher_probs)) not in distrusted_ids]
    rng = np.random.default_rng(seed)
    n_replay = min(len(splits.train), max(config.min_replay, int(round(config.replay_ratio * (len(kept) + len(alone))))))
    replay = np.sort(rng.choice(len(splits.train), size=n_replay, replace=False))
    replay_labels, replay_log_probs = splits.train.label_ids(label_names)[replay], base_log_probs[replay].copy()
    relabelled = np.isin(replay_log_probs.argmax(1), distrusted_ids)  # the teacher's distrusted label: learn the row's own truth
    replay_log_probs[relabelled] = _one_hot_log_probs(replay_labels[relabelled], len(label_names))

    def logged(rows: list[EscalationRecord]) -> np.ndarray:
        return np.log(np.clip(np.array([r.teacher_probs for r in rows], dtype=np.float32).reshape(len(rows), len(label_names)), 1e-12, 1.0))

    # feedback on an escalated item: the true label; its target stays the teacher's soft label
    # where the two agree and becomes the true label's one-hot where they disagree (the override)
    joined_labels = np.array([index[train_feedback[text_key(r.text)].label] for r in joined], dtype=np.int64)
    joined_log_probs = logged(joined)
    overridden = joined_log_probs.argmax(1) != joined_labels
    joined_log_probs[overridden] = _one_hot_log_probs(joined_labels[overridden], len(label_names))
    alone_labels = np.array([index[f.label] for f in alone], dtype=np.int64)
    texts = [r.text for r in plain] + [r.text for r in joined] + [f.text for f in alone] + [splits.train.texts[i] for i in replay]
    labels = np.concatenate([np.full(len(plain), IGNORE), joined_labels, alone_labels, replay_labels])
    log_probs = np.concatenate([logged(plain), joined_log_probs, _one_hot_log_probs(alone_labels, len(label_names)), replay_log_probs])
    # cap the plain escalations' share of the loss weight: they are a biased sample of hard inputs
    n_feedback = len(joined) + len(alone)
    others = n_replay + feedback_settings.weight * n_feedback
    cap = config.max_escalation_weight
    escalation_weight = min(1.0, cap / (1 - cap) * others / len(plain)) if plain else 1.0
    weights = np.concatenate([np.full(len(plain), escalation_weight), np.full(n_feedback, feedback_settings.weight),
                              np.ones(n_replay)]).astype(np.float32)
    contradicted = sum(label is not None and label != true for true, label in zip(truth, said))
    feedback_stats = {**feedback_counts, "used": n_feedback, "on_escalations": len(joined), "alone": len(alone),
                      "contradicted_teacher": contradicted, "weight": feedback_settings.weight,
                      "distrusted_teacher_labels": distrusted, "replay_relabelled": int(relabelled.sum())}
    stats = {"escalation_rows": len(kept), "replay_rows": int(n_replay), "escalation_weight": round(escalation_weight, 4),
             "audit_rows": sum(r.reason == "audit" for r in kept), "label_only_rows": sum(r.teacher_label_only for r in kept),
             "teacher_versions": sorted({r.teacher_version for r in kept}), "dropped": dropped,
             "feedback_rows": n_feedback, "feedback_contradicted": contradicted, "feedback": feedback_stats}
    return RefreshData(texts, labels, log_probs, weights, stats, holdout)
