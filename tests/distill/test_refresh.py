"""The refresh round: the training set it builds, its gate, and the registry record."""

from __future__ import annotations

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.config import RefreshConfig, StudentSpec, TrainConfig, WatchConfig
from distill.data import load_splits
from distill.errors import DataError
from distill.escalations import EscalationRecord, LogTail
from distill.losses import IGNORE
from distill.pipeline import TeacherCache, distill_student
from distill.gate import gate
from distill.refresh import refresh
from distill.refresh_data import build_dataset
from distill.registry import Registry
from serving.segments import SegmentWriter


def record(text: str, probs, time: str = "2026-11-24T10:00:00+00:00", **kw) -> EscalationRecord:
    return EscalationRecord(request_id="r", text=text, reason=kw.pop("reason", "unsure"), student_label=None, teacher_label="a",
                            student_probs=None, teacher_probs=list(probs), student_version="s", teacher_version="t", time=time, **kw)


@pytest.fixture(scope="module")
def splits(tiny_data):
    return load_splits(str(tiny_data))


def test_dataset_dedupes_filters_and_caps_escalation_weight(splits):
    names = splits.train.label_names
    sure, unsure = [0.9, 0.025, 0.025, 0.025, 0.025], [0.4, 0.35, 0.1, 0.1, 0.05]
    records = [
        record("brand new text one", sure),
        record("Brand new text ONE ", sure),  # same text, other case and spacing
        record("a low margin text", unsure),
        record("too old a text", sure, time="2026-01-01T00:00:00+00:00"),
        record(splits.train.texts[0], sure),  # already in the base data
        *[record(f"novel query {i}", sure) for i in range(40)],
    ]
    records.append(records[-1].model_copy())  # same id twice
    base = np.log(np.full((len(splits.train), len(names)), 1 / len(names)))
    config = RefreshConfig(margin_floor=0.2, since="2026-06-01T00:00:00+00:00", replay_ratio=0.5, min_replay=10, max_escalation_weight=0.5)
    data = build_dataset(records, splits, base, names, config)
    assert data.stats["escalation_rows"] == 41
    assert data.stats["dropped"] == {"outside_window": 1, "duplicate": 2, "low_margin": 1,
                                     "in_train_split": 1, "in_validation_split": 0, "in_test_split": 0, "in_feedback_holdout": 0,
                                     "distrusted_teacher_label": 0}
    assert data.stats["replay_rows"] == 20  # round(0.5 * 41)
    escalated = data.labels == IGNORE
    assert escalated.sum() == 41 and (data.labels[~escalated] >= 0).all()
    share = data.weights[escalated].sum() / data.weights.sum()
    assert share == pytest.approx(0.5, abs=1e-4)
    assert np.allclose(np.exp(data.teacher_log_probs[0]), sure, atol=1e-6)


def held_out_texts(splits) -> tuple[str, str]:
    """A validation text that is in no other split, and a test text that is in no other split."""
    train, validation, test = set(splits.train.texts), set(splits.validation.texts), set(splits.test.texts)
    return next(t for t in validation if t not in train | test), next(t for t in test if t not in train | validation)


def test_validation_and_test_texts_in_the_log_never_reach_the_training_set(splits):
    """Evaluation traffic sent through the service lands in the log; refresh must not learn the
    gate's validation split or the test split from it (matched as the train split is: exact text)."""
    sure = [0.9, 0.025, 0.025, 0.025, 0.025]
    validation_text, test_text = held_out_texts(splits)
    novel = [f"novel query {i}" for i in range(12)]
    records = [record(t, sure) for t in [validation_text, test_text, *novel, validation_text + " again"]]
    base = np.log(np.full((len(splits.train), 5), 1 / 5))
    data = build_dataset(records, splits, base, splits.train.label_names, RefreshConfig(min_replay=10))
    assert data.stats["dropped"]["in_validation_split"] == 1 and data.stats["dropped"]["in_test_split"] == 1
    escalated = [t for t, label in zip(data.texts, data.labels) if label == IGNORE]
    assert escalated == [*novel, validation_text + " again"]  # a text that merely contains one is not held out
    assert not set(data.texts) & {validation_text, test_text}  # nor through the replay of the train split


def test_too_few_records_is_a_clear_error(splits):
    with pytest.raises(DataError, match="0 usable escalation record"):
        build_dataset([], splits, np.zeros((len(splits.train), 5)), splits.train.label_names, RefreshConfig())


def test_gate_rejects_a_student_trained_on_shuffled_labels(tiny_home, splits, tmp_path):
    registry = Registry(tiny_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    current = HFClassifier.load(registry.current_path("student"))
    cache = TeacherCache(tmp_path / "cache")
    shuffled = splits.train.subset(range(len(splits.train)))
    rng = np.random.default_rng(0)
    object.__setattr__(shuffled, "labels", list(rng.permutation(shuffled.labels)))
    bad, _ = distill_student(teacher, shuffled, StudentSpec(train=TrainConfig(mode="hard", epochs=5)), cache, progress=False)
    decision, _ = gate(bad, current, teacher, splits, cache, "agreement>=0.97", tolerance=0.0)
    assert not decision.promote
    assert any(reason.startswith("accuracy") for reason in decision.reasons)
    assert decision.figures["candidate_accuracy"] < decision.figures["current_accuracy"]


def test_refresh_round_records_its_decision(own_home, splits, tmp_path, monkeypatch):
    import distill.refresh

    registry = Registry(own_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = list(dict.fromkeys(f"{t} please" for t in splits.test.texts))[:20] + list(held_out_texts(splits))
    probs = teacher.predict_proba(texts)
    writer = SegmentWriter(tmp_path / "log")
    writer.append([record(t, p) for t, p in zip(texts, probs)])
    trained_on: list[str] = []  # the rows the trainer actually receives
    train_student = distill.refresh.train_student
    monkeypatch.setattr(distill.refresh, "train_student", lambda model, tokenizer, rows, *rest: trained_on.extend(rows) or train_student(model, tokenizer, rows, *rest))
    before = registry.current("student")
    report = refresh(registry, own_home, splits, tmp_path / "log", RefreshConfig(min_replay=50, train=TrainConfig(epochs=2)), "tiny", progress=False)
    assert report["parent"] == before and report["data"]["escalation_rows"] == 20
    assert set(texts[:20]) <= set(trained_on) and not set(trained_on) & set(texts[20:])
    gate_events = [e for e in registry.history("student") if e["event"] == "gate"]
    assert gate_events[-1]["version"] == report["version"] and gate_events[-1]["promoted"] == report["promoted"]
    assert gate_events[-1]["dropped"] == report["data"]["dropped"]
    assert report["data"]["dropped"]["in_validation_split"] == report["data"]["dropped"]["in_test_split"] == 1
    assert registry.current("student") == (report["version"] if report["promoted"] else before)
    assert registry.meta("student", report["version"]).metrics["gate_passed"] == report["promoted"]


def test_refresh_lock_allows_one_round_at_a_time(tmp_path):
    from distill.errors import RegistryError
    from distill.refresh import refresh_lock

    with refresh_lock(tmp_path):
        with pytest.raises(RegistryError, match="another refresh is running"):
            with refresh_lock(tmp_path):
                pass
    with refresh_lock(tmp_path):
        pass


def test_watch_runs_a_round_once_enough_new_records_arrive(own_home, splits, tmp_path):
    import threading

    from distill.refresh import watch

    registry = Registry(own_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = [f"new phrasing {i}: {t}" for i, t in enumerate(splits.test.texts[:12])]
    writer = SegmentWriter(tmp_path / "log")
    writer.append([record(t, p) for t, p in zip(texts[:4], teacher.predict_proba(texts[:4]))])  # present before watching
    later = threading.Timer(0.5, lambda: writer.append([record(t, p) for t, p in zip(texts[4:], teacher.predict_proba(texts[4:]))]))
    later.start()
    reports: list[dict] = []
    watch(registry, own_home, splits, tmp_path / "log", RefreshConfig(min_replay=50, train=TrainConfig(epochs=1)), "tiny",
          WatchConfig(every_records=8, every_minutes=60, poll_s=0.2), max_rounds=1, on_round=reports.append)
    assert len(reports) == 1 and reports[0]["data"]["escalation_rows"] == 12


def test_log_tail_reads_only_what_is_new(tmp_path, monkeypatch):
    """A watcher polls a growing log: each poll parses the lines appended since the last one, no more."""
    import json
    from types import SimpleNamespace

    import distill.escalations

    parsed = []
    monkeypatch.setattr(distill.escalations, "json", SimpleNamespace(
        loads=lambda raw: parsed.append(raw) or json.loads(raw), JSONDecodeError=json.JSONDecodeError))
    writer, tail = SegmentWriter(tmp_path / "log"), LogTail(tmp_path / "log")
    writer.append([record(f"first {i}", [1, 0]) for i in range(5)])
    assert [r.text for r in tail.new_records()] == [f"first {i}" for i in range(5)]
    assert list(tail.new_records()) == []  # nothing new: nothing read
    writer.append([record(f"second {i}", [1, 0]) for i in range(3)])
    with (tmp_path / "log" / "segment-99990101T000000000000-1.jsonl").open("wb") as later:  # another replica's segment
        later.write(record("third", [1, 0]).model_dump_json().encode() + b"\n" + b'{"torn')
    assert [r.text for r in tail.new_records()] == ["second 0", "second 1", "second 2", "third"]
    assert len(parsed) == 5 + 3 + 1  # each complete line once, across three polls; the torn one not yet


def test_since_accepts_a_plain_date_and_rejects_nonsense(splits):
    from distill.refresh_data import select_records

    records = [record("old one", [0.9, 0.1], time="2026-01-01T00:00:00+00:00"), record("new one", [0.9, 0.1])]
    kept, dropped = select_records(records, {}, RefreshConfig(since="2026-06-01"))
    assert [r.text for r in kept] == ["new one"] and dropped["outside_window"] == 1
    with pytest.raises(DataError, match="--since"):
        select_records(records, {}, RefreshConfig(since="last tuesday"))


@pytest.mark.slow
def test_refresh_trains_as_a_ray_train_job(own_home, splits, tmp_path):
    registry = Registry(own_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = list(dict.fromkeys(f"kindly {t}" for t in splits.test.texts))[:20]
    SegmentWriter(tmp_path / "log").append([record(t, p) for t, p in zip(texts, teacher.predict_proba(texts))])
    config = RefreshConfig(min_replay=60, workers=2, train=TrainConfig(epochs=2))
    report = refresh(registry, own_home, splits, tmp_path / "log", config, "tiny", progress=False)
    meta = registry.meta("student", report["version"])
    assert meta.metrics["workers"] == 2 and meta.metrics["rows"] == 40  # each worker's equal shard of 80 rows
    candidate = HFClassifier.load(registry.path("student", report["version"]))
    labels = splits.test.label_ids(teacher.labels)
    assert (candidate.predict_proba(splits.test.texts).argmax(1) == labels).mean() >= 0.8


def test_refresh_from_scratch_builds_a_student_of_the_current_kind(own_home, splits, tmp_path):
    registry = Registry(own_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = list(dict.fromkeys(f"hey {t}" for t in splits.test.texts))[:10]
    SegmentWriter(tmp_path / "log").append([record(t, p) for t, p in zip(texts, teacher.predict_proba(texts))])
    before = registry.current("student")
    config = RefreshConfig(min_replay=50, warm_start=False, train=TrainConfig(epochs=2))
    report = refresh(registry, own_home, splits, tmp_path / "log", config, "tiny", progress=False)
    candidate = HFClassifier.load(registry.path("student", report["version"]))
    current = HFClassifier.load(registry.path("student", before))
    assert type(candidate.model) is type(current.model)
    assert registry.meta("student", report["version"]).train_config["warm_start"] is False
