"""Model backends: save / load round trips through from_pretrained, safetensors only, students
initialised from the teacher, and distillation on the tiny data set."""

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.data import load_splits
from distill.errors import ModelError
from distill.config import DEFAULT_GOAL, StudentSpec, TrainConfig
from distill.pipeline import TeacherCache, distill_student
from distill.registry import Registry
from distill.students import init_bow_student, init_transformer_student


@pytest.fixture(scope="module")
def teacher(tiny_home) -> HFClassifier:
    return HFClassifier.load(Registry(tiny_home / "registry").current_path("teacher"))


@pytest.fixture(scope="module")
def splits(tiny_data):
    return load_splits(str(tiny_data))


def test_teacher_and_student_load_with_labels_versions_and_policy(tiny_home, teacher, splits):
    registry = Registry(tiny_home / "registry")
    student = HFClassifier.load(registry.current_path("student"))
    assert teacher.labels == student.labels == splits.train.label_names
    assert teacher.version == registry.current("teacher") and student.version == registry.current("student")
    assert student.meta.teacher == teacher.version
    assert student.meta.policy["goal"].startswith(DEFAULT_GOAL) and 0 <= student.meta.policy["threshold"] <= 1
    probs = student.predict_proba(splits.test.texts)
    assert probs.shape == (100, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the tiny task is easy: both models must be right on most of it
    labels = splits.test.label_ids(teacher.labels)
    assert (teacher.predict_proba(splits.test.texts).argmax(1) == labels).mean() >= 0.9
    assert (probs.argmax(1) == labels).mean() >= 0.8


def test_bow_student_starts_from_the_teacher_embeddings(teacher):
    model, _ = init_bow_student(teacher)
    assert np.allclose(model.embeddings.weight.detach().numpy(), teacher.model.get_input_embeddings().weight.detach().numpy())


def test_transformer_student_keeps_evenly_spaced_layers(teacher):
    model, _ = init_transformer_student(teacher, num_layers=2)
    assert model.config.num_hidden_layers == 2
    kept_last = model.encoder.encoder.layer[1].output.dense.weight
    teacher_last = teacher.model.encoder.encoder.layer[5].output.dense.weight
    assert np.allclose(kept_last.detach().numpy(), teacher_last.detach().numpy())
    with pytest.raises(ModelError, match="between 1 and 6"):
        init_transformer_student(teacher, num_layers=9)


def test_transformer_student_distilled_on_a_slice_loads_back_identically(teacher, splits, tmp_path):
    train = splits.train.subset(range(60))
    spec = StudentSpec(kind="transformer", layers=2, train=TrainConfig(epochs=2, batch_size=16, lr=5e-5))
    student, metrics = distill_student(teacher, train, spec, TeacherCache(tmp_path / "cache"), progress=False)
    assert metrics["rows"] == 60 and len(metrics["epoch_loss"]) == 2
    student.save(tmp_path / "student")
    loaded = HFClassifier.load(tmp_path / "student")
    texts = splits.test.texts[:16]
    assert np.allclose(student.predict_proba(texts), loaded.predict_proba(texts), atol=1e-6)


def test_distillation_is_deterministic_under_a_seed(teacher, splits, tmp_path):
    train = splits.train.subset(range(80))
    spec = StudentSpec(train=TrainConfig(epochs=3))
    cache = TeacherCache(tmp_path / "cache")
    a, _ = distill_student(teacher, train, spec, cache, progress=False)
    b, _ = distill_student(teacher, train, spec, cache, progress=False)
    assert np.array_equal(a.predict_proba(splits.test.texts), b.predict_proba(splits.test.texts))


def test_pickle_weights_are_refused(tmp_path, teacher):
    teacher.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="only pickle-based weights \\(pytorch_model.bin\\)"):
        HFClassifier.load(tmp_path / "m")


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        HFClassifier.load(tmp_path / "absent")


def test_fast_encoding_matches_the_tokenizer_wrapper(teacher, splits):
    texts = list(splits.test.texts[:20]) + ["word " * 400, "x"]  # one truncated, one short: padding
    wrapper = teacher.tokenizer(texts, padding=True, truncation=True, max_length=teacher.max_length, return_tensors="pt")
    fast = teacher.encode(texts)
    assert fast["input_ids"].shape == (len(texts), teacher.max_length)
    for key in ("input_ids", "attention_mask"):
        assert fast[key].equal(wrapper[key])


def test_length_sorted_passes_answer_in_the_callers_order(teacher, splits):
    """More texts than one CPU pass takes, of mixed lengths: each row equals that text's logits
    computed alone (no padding), in the order given."""
    from distill.backends import CPU_PASS_TEXTS

    texts = [text + " more words" * (i % 7) for i, text in enumerate(splits.test.texts[: 3 * CPU_PASS_TEXTS + 5])]
    together = teacher.logits(texts)
    alone = np.concatenate([teacher.logits([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)
