"""`cascade simulate --feedback-rate R --wrong-teacher ...`: the wrong teacher is a real model
version that mislabels exactly the chosen classes, the run sends gold labels as outcome feedback
through POST /v1/feedback, its refreshes learn from them, the report carries recall on the
chosen classes and the feedback counts, and the home's teacher comes back at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.data import load_splits
from distill.feedback import read_feedback
from distill.metadata import escalation_policy
from distill.registry import Registry
from serving.cli.simulate import WRONG_TEACHER_KIND, honest_teacher, make_wrong_teacher, pick_wrong_classes, use_wrong_teacher, wrong_answers


def test_the_wrong_teacher_mislabels_exactly_the_chosen_classes(tiny_home, tiny_data, tmp_path):
    teacher = HFClassifier.load(Registry(tiny_home / "registry").current_path("teacher"))
    test = load_splits(str(tiny_data)).test
    classes = ["music", "alarm", "weather"]
    assert wrong_answers(classes) == {"music": "alarm", "alarm": "weather", "weather": "music"}
    honest = np.array(teacher.labels)[teacher.predict_proba(test.texts).argmax(1)]
    made = make_wrong_teacher(teacher, classes)
    wrong = np.array(made.labels)[made.predict_proba(test.texts).argmax(1)]
    # where the honest teacher answered a chosen class, the wrong one answers the next; elsewhere the same
    expected = np.array([wrong_answers(classes).get(label, label) for label in honest])
    assert (wrong == expected).all() and (wrong != honest).sum() == np.isin(honest, classes).sum() > 0
    truth = np.array(test.labels)
    assert np.mean(wrong[np.isin(truth, classes)] == truth[np.isin(truth, classes)]) < 0.1


def test_wrong_classes_by_name_or_count():
    labels = [f"class_{i}" for i in range(10)]
    assert pick_wrong_classes("class_3, class_1", labels) == ["class_3", "class_1"]
    assert pick_wrong_classes("4", labels) == pick_wrong_classes("4", labels) and len(set(pick_wrong_classes("4", labels))) == 4
    for bad, message in (("class_3", "at least two"), ("class_3,nope", "unknown class"), ("1", "between 2 and 10")):
        with pytest.raises(ValueError, match=message):
            pick_wrong_classes(bad, labels)


def test_a_wrong_teacher_is_registered_once_and_the_honest_one_found_again(own_home):
    registry = Registry(own_home / "registry")
    base = registry.current("teacher")
    wrong = use_wrong_teacher(registry, base, ["music", "alarm"])
    meta = registry.meta("teacher", wrong)
    assert registry.current("teacher") == wrong and meta.kind == WRONG_TEACHER_KIND and meta.parent == base
    assert meta.train_config["wrong_answers"] == {"music": "alarm", "alarm": "music"}
    assert use_wrong_teacher(registry, base, ["music", "alarm"]) == wrong  # reused, not registered again
    assert honest_teacher(registry) == base and registry.current("teacher") == base  # as after a run that did not end cleanly


def recall_on_wrong_classes(registry: Registry, student_version: str, wrong_teacher: HFClassifier, tiny_data: Path,
                            classes: list[str]) -> tuple[float, float]:
    """The student's and the cascade's recall on ``classes`` over the test split, worked out here
    from the registered student a report row names and the wrong teacher it was served with:
    the share of the test items of those classes that each answers with their true label (the
    cascade answers with the teacher where the student's own policy escalates)."""
    student = HFClassifier.load(registry.path("student", student_version))
    test = load_splits(str(tiny_data)).test
    truth = np.array(test.labels)
    among = np.isin(truth, classes)
    assert among.sum() >= 20, "the test split has items of the wrong classes"
    probs = student.predict_proba(test.texts)
    student_answers = np.array(student.labels)[probs.argmax(1)]
    teacher_answers = np.array(wrong_teacher.labels)[wrong_teacher.predict_proba(test.texts).argmax(1)]
    cascade_answers = np.where(escalation_policy(student.meta).escalate_mask(probs), teacher_answers, student_answers)
    return (float(np.mean(student_answers[among] == truth[among])), float(np.mean(cascade_answers[among] == truth[among])))


@pytest.mark.slow
def test_simulate_sends_feedback_and_learns_from_it(tiny_home, tiny_data, tmp_path):
    from test_simulate_cli import run_simulate

    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    teacher = Registry(home / "registry").current("teacher")
    png = tmp_path / "rounds.png"
    report = run_simulate(home, tiny_data, tmp_path, png, "--feedback-rate", "0.5", "--wrong-teacher", "music,weather")
    assert report["feedback_rate"] == 0.5 and report["wrong_classes"] == ["music", "weather"]
    assert report["teacher_recall"] < 0.1  # the served teacher was wrong on them
    registry = Registry(home / "registry")
    assert registry.current("teacher") == teacher  # restored
    assert [m.kind for m in registry.versions("teacher")].count(WRONG_TEACHER_KIND) == 1
    stored = read_feedback(Path(report["feedback_log"]))
    assert Path(report["feedback_log"]).parent == Path(report["escalation_log"]).parent  # this run's own logs
    rounds = report["rounds"]
    for row in rounds:
        assert 0 < row["feedback_sent"] == row["feedback_recorded"]  # every item new, every one recorded
    # the recall the report carries is the round's student's, and its cascade's with the wrong teacher, on the chosen classes
    [wrong] = [m.version for m in registry.versions("teacher") if m.kind == WRONG_TEACHER_KIND]
    wrong_teacher = HFClassifier.load(registry.path("teacher", wrong))
    for row in [*rounds, report["final"]]:
        student_recall, cascade_recall = recall_on_wrong_classes(registry, row["student"], wrong_teacher, tiny_data, ["music", "weather"])
        assert row["wrong_class_student_recall"] == pytest.approx(student_recall, abs=1e-4), row["student"]
        assert row["wrong_class_cascade_recall"] == pytest.approx(cascade_recall, abs=1e-4), row["student"]
    assert len(stored) == sum(r["feedback_sent"] for r in rounds)
    train = load_splits(str(tiny_data)).train
    gold = dict(zip(train.texts, train.labels))
    assert all(r.label == gold[r.text] and not r.evaluation for r in stored.values())  # the data set's labels, as production feedback
    contradicted = [r for r in stored.values() if r.teacher_label is not None and r.teacher_label != r.label]
    assert contradicted and rounds[0]["refresh_feedback_contradicted"] > 0
    assert 0 < rounds[0]["refresh_feedback_rows"] <= rounds[1]["refresh_feedback_rows"]  # learned from, cumulatively
    assert report["final"]["wrong_class_student_recall"] is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
