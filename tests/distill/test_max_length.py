"""Inference truncates texts where the model was trained to, not at a fixed length."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from distill.backends import FOREIGN_MAX_LENGTH, HFClassifier, inference_max_length
from distill.errors import ModelError
from distill.metadata import META_FILE, read_meta, write_meta
from distill.registry import Registry

LONG_TEXT = " ".join(f"word{i}" for i in range(400))


@pytest.fixture()
def student_dir(tiny_home, tmp_path):
    """A copy of the tiny registry's current student, free to edit."""
    return shutil.copytree(Registry(tiny_home / "registry").current_path("student"), tmp_path / "student")


def test_a_registered_model_truncates_where_it_was_trained(student_dir):
    meta = read_meta(student_dir)
    write_meta(student_dir, meta.model_copy(update={"train_config": {**meta.train_config, "max_length": 16}}))
    student = HFClassifier.load(student_dir)
    assert student.max_length == 16
    assert student.encode([LONG_TEXT, "short"])["input_ids"].shape == (2, 16)


def test_a_foreign_model_truncates_at_its_tokenizers_limit_capped(student_dir):
    (student_dir / META_FILE).unlink()  # a plain Hugging Face directory
    model = HFClassifier.load(student_dir)
    assert model.max_length == min(model.tokenizer.model_max_length, FOREIGN_MAX_LENGTH)
    assert model.encode([LONG_TEXT])["input_ids"].shape[1] == model.max_length > 128


def test_an_unknown_limit_is_capped_and_a_bad_one_refused():
    assert inference_max_length(None, SimpleNamespace(model_max_length=int(1e30))) == FOREIGN_MAX_LENGTH
    assert inference_max_length(None, SimpleNamespace(model_max_length=64)) == 64
    bad = SimpleNamespace(version="s1", train_config={"max_length": 0})
    with pytest.raises(ModelError, match="train_config.max_length"):
        inference_max_length(bad, SimpleNamespace(model_max_length=64))


def test_the_embedded_teacher_records_its_truncation(tiny_home):
    teacher = HFClassifier.load(Registry(tiny_home / "registry").current_path("teacher"))
    assert teacher.max_length == teacher.meta.train_config["max_length"]
