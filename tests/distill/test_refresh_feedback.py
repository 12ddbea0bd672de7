"""Outcome feedback in the refresh round: true labels override the teacher's where they disagree,
items the student answered alone become hard-label examples, evaluation and held-out feedback
are never trained on, the gate measures both students on the held-out share, and a candidate
that passes can go into shadow instead of being promoted."""

from __future__ import annotations

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.config import RefreshConfig, StudentSpec, TrainConfig
from distill.data import load_splits
from distill.escalations import EscalationRecord
from distill.feedback import FeedbackRecord
from distill.settings import Paths
from distill.losses import IGNORE
from distill.pipeline import TeacherCache, distill_student
from distill.gate import gate
from distill.refresh import refresh
from distill.refresh_data import FeedbackSettings, build_dataset, held_out
from distill.sign_test import sign_test_p
from distill.registry import Registry
from serving.segments import SegmentWriter

TRAIN_ALL = FeedbackSettings(holdout_share=0.0)  # no held-out share: every eligible item is trained on


def escalation(text: str, probs, request_id: str = "r") -> EscalationRecord:
    top = int(np.argmax(probs))
    return EscalationRecord(request_id=request_id, text=text, reason="unsure", student_label=None, teacher_label=f"#{top}",
                            student_probs=None, teacher_probs=list(probs), student_version="s", teacher_version="t")


def feedback(text: str, label: str, request_id: str = "q", index: int = 0, teacher_label: str | None = None,
             evaluation: bool = False, time: float = 1.0) -> FeedbackRecord:
    return FeedbackRecord(request_id=request_id, index=index, label=label, text=text, time=time,
                          tier="teacher" if teacher_label else "student", answered=teacher_label or label,
                          student_label=label, teacher_label=teacher_label, student_version="s",
                          teacher_version="t" if teacher_label else None, evaluation=evaluation)


def request_ids(share: float, held: bool, n: int) -> list[str]:
    """``n`` request ids whose item 0 the hash puts in (``held``) or out of the held-out share."""
    ids = (f"req-{i}" for i in range(10_000))
    return [i for i in ids if held_out(feedback("x", "a", request_id=i), share) == held][:n]


@pytest.fixture(scope="module")
def splits(tiny_data):
    return load_splits(str(tiny_data))


def uniform_base(splits) -> np.ndarray:
    return np.log(np.full((len(splits.train), len(splits.train.label_names)), 1 / len(splits.train.label_names)))


def test_feedback_overrides_the_teacher_where_they_disagree_and_teaches_what_the_student_answered(splits):
    names = splits.train.label_names  # alarm, balance, music, transfer, weather
    sure_alarm = [0.9, 0.025, 0.025, 0.025, 0.025]
    records = [escalation("wake me at dawn", sure_alarm), escalation("an alarm for dawn", sure_alarm),
               escalation("Plain teacher row", sure_alarm)]
    items = [
        feedback("wake me at dawn", "alarm", "q1", teacher_label="alarm"),  # agrees with the teacher
        feedback("an alarm for dawn", "weather", "q2", teacher_label="alarm"),  # contradicts it: the true label wins
        feedback("play jazz on the radio", "music", "q3"),  # the student answered alone: no escalation record
        feedback("play jazz on the radio", "music", "q4"),  # the same text again
    ]
    data = build_dataset(records, splits, uniform_base(splits), names, RefreshConfig(min_replay=10), feedback=items,
                         feedback_settings=TRAIN_ALL)
    row = {text: i for i, text in enumerate(data.texts)}
    plain, agree, override, alone = (row[t] for t in ("Plain teacher row", "wake me at dawn", "an alarm for dawn", "play jazz on the radio"))
    assert data.labels[plain] == IGNORE and np.allclose(np.exp(data.teacher_log_probs[plain]), sure_alarm, atol=1e-6)
    # agreeing: the teacher's soft label kept, the true label added as the hard term's target
    assert data.labels[agree] == names.index("alarm") and np.allclose(np.exp(data.teacher_log_probs[agree]), sure_alarm, atol=1e-6)
    # disagreeing: the target is the true label's one-hot, whatever the teacher said
    for i, label in ((override, "weather"), (alone, "music")):
        assert data.labels[i] == names.index(label)
        assert np.exp(data.teacher_log_probs[i]).argmax() == names.index(label) and np.exp(data.teacher_log_probs[i]).max() > 0.999
    assert data.texts.count("play jazz on the radio") == 1
    # ground truth is not capped like the escalations: a feedback row weighs as a replayed base row
    assert data.weights[agree] == data.weights[override] == data.weights[alone] == 1.0
    stats = data.stats["feedback"]
    assert (stats["used"], stats["on_escalations"], stats["alone"], stats["duplicate"]) == (3, 2, 1, 1)
    assert data.stats["feedback_rows"] == 3 and data.stats["feedback_contradicted"] == stats["contradicted_teacher"] == 1
    assert data.stats["escalation_rows"] == 3 and data.holdout == []


def test_a_changed_label_replaces_the_earlier_one(splits):
    items = [feedback("wire money to bob", "balance", "q1", time=1.0), feedback("wire money to bob", "transfer", "q1", time=2.0)]
    data = build_dataset([], splits, uniform_base(splits), splits.train.label_names, RefreshConfig(min_replay=10),
                         feedback=items, feedback_settings=TRAIN_ALL)
    assert data.labels[data.texts.index("wire money to bob")] == splits.train.label_names.index("transfer")
    assert data.stats["feedback_rows"] == 1  # feedback alone is enough to train on


def test_evaluation_held_out_and_known_split_feedback_is_never_trained_on(splits):
    settings = FeedbackSettings(holdout_share=0.5)
    held, trained = request_ids(0.5, True, 2), request_ids(0.5, False, 4)
    validation_text = next(t for t in splits.validation.texts if t not in set(splits.train.texts))
    items = [
        feedback("set an alarm at dawn", "alarm", trained[0]),  # trained on
        feedback("what will it be like outside", "weather", trained[1], evaluation=True),  # evaluation traffic
        feedback("how much is in savings now", "balance", held[0]),  # held out by its request's hash
        feedback("how much is in savings now ", "balance", trained[2]),  # the same text, another request: held out too
        feedback(validation_text, "weather", trained[3]),  # a text of the gate's validation split
        feedback("send a tenner to mum", "transfer", held[1]),
    ]
    records = [escalation("how much is in savings now", [0.1, 0.6, 0.1, 0.1, 0.1]), escalation("a novel escalation", [0.6, 0.1, 0.1, 0.1, 0.1])]
    data = build_dataset(records, splits, uniform_base(splits), splits.train.label_names, RefreshConfig(min_replay=10),
                         feedback=items, feedback_settings=settings)
    never = {"what will it be like outside", "how much is in savings now", "how much is in savings now ", validation_text, "send a tenner to mum"}
    assert not never & set(data.texts)
    assert "set an alarm at dawn" in data.texts and "a novel escalation" in data.texts
    assert sorted(r.text for r in data.holdout) == sorted(["what will it be like outside", "how much is in savings now", "send a tenner to mum"])
    stats = data.stats["feedback"]
    assert (stats["items"], stats["evaluation"], stats["held_out"], stats["in_validation_split"], stats["in_feedback_holdout"], stats["used"]) == (6, 1, 2, 1, 1, 1)
    assert data.stats["dropped"]["in_feedback_holdout"] == 1  # the held-out text's escalation record too


def test_a_teacher_label_feedback_shows_wrong_is_distrusted(splits):
    """Feedback shows the teacher answering "alarm" for music requests: its other "alarm"
    records are dropped and replayed base rows it called "alarm" learn their own truth."""
    names = splits.train.label_names
    alarm, music = names.index("alarm"), names.index("music")
    says_alarm = [0.9, 0.025, 0.025, 0.025, 0.025]
    records = [escalation(f"put on tune {i}", says_alarm) for i in range(8)] + [escalation("will it snow", [0.025, 0.025, 0.025, 0.025, 0.9])]
    items = [feedback(f"put on tune {i}", "music", f"q{i}") for i in range(4)]  # four of the teacher's "alarm" records were music
    items.append(feedback("play the song", "music", "q9"))  # the student answered it; the teacher, asked, says alarm
    base = np.log(np.full((len(splits.train), len(names)), 0.1 / (len(names) - 1)))
    base[:, alarm] = np.log(0.9)  # the teacher says "alarm" of every base row
    data = build_dataset(records, splits, base, names, RefreshConfig(min_replay=10, replay_ratio=1.0), feedback=items,
                         feedback_settings=TRAIN_ALL, teacher_labels={"play the song": "alarm"})
    stats = data.stats["feedback"]
    assert stats["distrusted_teacher_labels"] == {"alarm": {"items": 5, "agreed": 0}} and stats["contradicted_teacher"] == 5
    assert data.stats["dropped"]["distrusted_teacher_label"] == 4  # the "alarm" records without feedback
    assert not {f"put on tune {i}" for i in range(4, 8)} & set(data.texts) and "will it snow" in data.texts
    replay = np.arange(len(data.texts)) >= len(data.texts) - data.stats["replay_rows"]
    targets, labels = np.exp(data.teacher_log_probs[replay]).argmax(1), data.labels[replay]
    assert (targets == labels).all() and stats["replay_relabelled"] == replay.sum()  # each learns its own truth
    assert (labels == music).any() and (labels != alarm).any()
    # four contradictions are not yet evidence enough (p = 1/16): nothing is distrusted
    data = build_dataset(records, splits, base, names, RefreshConfig(min_replay=10), feedback=items[:4], feedback_settings=TRAIN_ALL)
    assert data.stats["feedback"]["distrusted_teacher_labels"] == {} and data.stats["dropped"]["distrusted_teacher_label"] == 0


def test_the_held_out_share_follows_the_item():
    ids = [f"request-{i}" for i in range(4000)]
    share = np.mean([held_out(feedback("t", "a", request_id=i), 0.2) for i in ids])
    assert share == pytest.approx(0.2, abs=0.02)
    # an item goes the same way whatever its text or label; the items of one request spread
    assert all(held_out(feedback("t", "a", request_id=i), 0.2) == held_out(feedback("u", "b", request_id=i), 0.2) for i in ids)
    assert 0 < np.mean([held_out(feedback("t", "a", request_id="one-batch", index=k), 0.2) for k in range(200)]) < 1
    assert all(held_out(feedback("t", "a", request_id=i, evaluation=True), 0.0) for i in ids[:50])


def test_sign_test():
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(3, 3) == pytest.approx(42 / 64) and sign_test_p(0, 4) == 1.0


def test_gate_reports_and_judges_accuracy_on_held_out_feedback(tiny_home, splits, tmp_path):
    registry = Registry(tiny_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    current = HFClassifier.load(registry.current_path("student"))
    cache = TeacherCache(tmp_path / "cache")
    holdout = [feedback(t, label, f"q{i}", evaluation=True) for i, (t, label) in enumerate(zip(splits.test.texts, splits.test.labels))]
    truth = splits.test.label_ids(teacher.labels)
    decision, _ = gate(current, current, teacher, splits, cache, "agreement>=0.97", 0.0, holdout)
    f = decision.figures
    expected = round(float(np.mean(current.predict_proba(splits.test.texts).argmax(1) == truth)), 4)
    assert f["feedback_items"] == len(holdout) and f["candidate_feedback_accuracy"] == f["current_feedback_accuracy"] == expected
    assert f["teacher_feedback_accuracy"] == round(float(np.mean(teacher.predict_proba(splits.test.texts).argmax(1) == truth)), 4)
    assert (f["feedback_candidate_only"], f["feedback_current_only"], f["feedback_p_worse"]) == (0, 0, 1.0)
    # a student trained on shuffled labels is worse on the held-out outcomes, beyond the bound
    shuffled = splits.train.subset(range(len(splits.train)))
    object.__setattr__(shuffled, "labels", list(np.random.default_rng(0).permutation(shuffled.labels)))
    bad, _ = distill_student(teacher, shuffled, StudentSpec(train=TrainConfig(mode="hard", epochs=5)), cache, progress=False)
    decision, _ = gate(bad, current, teacher, splits, cache, "agreement>=0.97", 1.0, holdout)
    f = decision.figures
    assert f["candidate_feedback_accuracy"] < f["current_feedback_accuracy"] and f["feedback_p_worse"] < 0.05
    assert not decision.promote and any(r.startswith("held-out feedback accuracy") for r in decision.reasons)
    # with no feedback the figures are there, empty, and decide nothing
    decision, _ = gate(current, current, teacher, splits, cache, "agreement>=0.97", 0.0)
    assert decision.figures["feedback_items"] == 0 and decision.figures["candidate_feedback_accuracy"] is None


def test_refresh_reads_the_homes_feedback_and_records_what_it_used(own_home, splits, tmp_path, monkeypatch):
    import distill.refresh

    registry = Registry(own_home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = list(dict.fromkeys(f"{t} thanks" for t in splits.test.texts))[:30]
    probs = teacher.predict_proba(texts)
    SegmentWriter(tmp_path / "log").append([escalation(t, p) for t, p in zip(texts[:20], probs[:20])])
    wrong = teacher.labels[(int(probs[0].argmax()) + 1) % len(teacher.labels)]
    trained, held = request_ids(FeedbackSettings.holdout_share, False, 12), request_ids(FeedbackSettings.holdout_share, True, 4)
    items = [feedback(texts[0], wrong, trained[0], teacher_label=teacher.labels[int(probs[0].argmax())])]  # contradicts the teacher
    items += [feedback(t, teacher.labels[int(p.argmax())], r) for t, p, r in zip(texts[20:26], probs[20:26], trained[1:])]  # student-answered
    items += [feedback(t, teacher.labels[int(p.argmax())], r) for t, p, r in zip(texts[26:30], probs[26:30], held)]
    items += [feedback("what is the weather now please", "weather", "evaluation-request", evaluation=True)]
    SegmentWriter(Paths.under(own_home).feedback).append(items)
    trained_on: list[str] = []
    train_student = distill.refresh.train_student
    monkeypatch.setattr(distill.refresh, "train_student", lambda model, tokenizer, rows, *rest: trained_on.extend(rows) or train_student(model, tokenizer, rows, *rest))
    report = refresh(registry, own_home, splits, tmp_path / "log", RefreshConfig(min_replay=50, train=TrainConfig(epochs=1)), "tiny", progress=False)
    assert report["data"]["feedback_rows"] == 7 and report["data"]["feedback_contradicted"] == 1
    assert set(texts[20:26]) <= set(trained_on) and not set(trained_on) & (set(texts[26:30]) | {"what is the weather now please"})
    assert report["figures"]["feedback_items"] == 5  # the held-out share and the evaluation item
    event = [e for e in registry.history("student") if e["event"] == "gate"][-1]
    assert event["feedback"] == report["data"]["feedback"] and event["feedback"]["contradicted_teacher"] == 1
    assert event["feedback_items"] == 5 and event["candidate_feedback_accuracy"] == report["figures"]["candidate_feedback_accuracy"]


def test_refresh_shadow_puts_a_passing_candidate_in_shadow(own_home, splits, tmp_path):
    registry = Registry(own_home / "registry")
    # a current student whose policy escalates everything: any candidate escalates no more, so the gate passes
    before = registry.current("student")
    policy = {**registry.meta("student", before).policy, "threshold": 1.0, "class_thresholds": {}}
    current = registry.derive("student", before, policy=policy).version
    registry.promote("student", current)
    teacher = HFClassifier.load(registry.current_path("teacher"))
    texts = list(dict.fromkeys(f"{t} now" for t in splits.test.texts))[:20]
    SegmentWriter(tmp_path / "log").append([escalation(t, p) for t, p in zip(texts, teacher.predict_proba(texts))])
    report = refresh(registry, own_home, splits, tmp_path / "log", RefreshConfig(min_replay=50, tolerance=1.0, train=TrainConfig(epochs=1)),
                     "tiny", progress=False, shadow=True)
    assert report["shadow"] is True and report["promoted"] is False and report["reasons"] == ["passed; in shadow"]
    assert registry.current("student") == current  # not promoted: the serving replicas judge it on live traffic
    assert registry.shadow("student")["version"] == report["version"] and registry.shadow("student")["current"] == current
    events = registry.history("student")
    assert [e["event"] for e in events[-2:]] == ["shadow_started", "gate"] and events[-1]["shadow"] is True


def test_cascade_refresh_takes_a_feedback_log_and_says_what_it_used(own_home, tiny_data, splits, tmp_path, capsys):
    import json

    from serving.cli import build_parser, main

    assert "(default: 0.2)" in " ".join(build_parser()._subparsers._group_actions[0].choices["refresh"].format_help().split())
    assert FeedbackSettings.holdout_share == 0.2  # the help's default, written there to keep torch out of --help
    with pytest.raises(SystemExit):
        build_parser().parse_args(["refresh", "--feedback-holdout", "1.5"])
    teacher = HFClassifier.load(Registry(own_home / "registry").current_path("teacher"))
    texts = list(dict.fromkeys(f"{t} today" for t in splits.test.texts))[:12]
    probs = teacher.predict_proba(texts)
    SegmentWriter(tmp_path / "log").append([escalation(t, p) for t, p in zip(texts[:8], probs[:8])])
    SegmentWriter(tmp_path / "feedback").append([feedback(t, teacher.labels[int(p.argmax())], f"q{i}") for i, (t, p) in enumerate(zip(texts[6:], probs[6:]))])
    assert main(["refresh", "--home", str(own_home), "--data", str(tiny_data), "--log", str(tmp_path / "log"), "--feedback", str(tmp_path / "feedback"),
                 "--feedback-holdout", "0", "--epochs", "1", "-q"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["data"]["feedback"]["used"] == 6 and report["data"]["feedback"]["on_escalations"] == 2
    assert "6 feedback labels (0 contradicted the teacher)" in err
