"""The embedded default on Banking77, end to end: bootstrap from an empty home, then the
accuracy targets on the test set (never used for fitting). Slow: it builds both models."""

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.bootstrap import ensure_models
from distill.config import StudentSpec, TrainConfig
from distill.data import load_splits
from distill.pipeline import TeacherCache, distill_student
from router import EscalationPolicy, cascade_predictions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def banking77(tmp_path_factory):
    home = tmp_path_factory.mktemp("banking77-home")
    registry = ensure_models(home, "banking77", progress=False)
    teacher = HFClassifier.load(registry.current_path("teacher"))
    student = HFClassifier.load(registry.current_path("student"))
    return home, load_splits("banking77"), teacher, student


def test_teacher_student_and_cascade_targets(banking77):
    _, splits, teacher, student = banking77
    labels = splits.test.label_ids(teacher.labels)
    teacher_probs = teacher.predict_proba(splits.test.texts)
    student_probs = student.predict_proba(splits.test.texts)
    teacher_accuracy = float(np.mean(teacher_probs.argmax(1) == labels))
    assert teacher_accuracy >= 0.92
    assert float(np.mean(student_probs.argmax(1) == labels)) >= 0.90
    policy = EscalationPolicy.from_dict(student.meta.policy)
    escalate = policy.escalate_mask(student_probs)
    cascade_accuracy = float(np.mean(cascade_predictions(student_probs, teacher_probs, escalate) == labels))
    assert escalate.mean() <= 0.10
    assert cascade_accuracy >= teacher_accuracy


def test_distilling_beats_hard_labels_alone(banking77):
    home, splits, teacher, student = banking77
    hard, _ = distill_student(teacher, splits.train, StudentSpec(train=TrainConfig(mode="hard")), TeacherCache(home / "cache"), progress=False)
    labels = splits.test.label_ids(teacher.labels)
    soft_accuracy = np.mean(student.predict_proba(splits.test.texts).argmax(1) == labels)
    hard_accuracy = np.mean(hard.predict_proba(splits.test.texts).argmax(1) == labels)
    assert hard_accuracy < soft_accuracy
