"""The offline steps every command composes: teacher outputs (cached), distilling a student,
fitting its escalation policy, and registering the result as a new version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from distill.backends import HFClassifier
from distill.data import DataSplits, TextDataset
from distill.metadata import ModelMeta
from distill.registry import Registry, new_version_id
from distill.students import init_bow_student, init_transformer_student
from distill.config import StudentSpec
from distill.train import train_student
from router import EscalationPolicy, fit_policy

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in numpy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class TeacherCache:
    """The teacher's log-probabilities per (teacher version, data fingerprint), in safetensors
    files, so distilling several students from one teacher runs the teacher once."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, teacher_version: str, data: TextDataset) -> Path:
        safe = teacher_version.replace("/", "--")  # a hub id such as org/model
        return self.directory / f"{safe}-{data.fingerprint()}.safetensors"

    def put(self, teacher_version: str, data: TextDataset, log_probs: np.ndarray) -> None:
        """Store log-probabilities computed elsewhere (for example while building the teacher)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(teacher_version, data).with_suffix(".tmp")
        save_file({"log_probs": log_probs.astype(np.float32)}, str(tmp))
        tmp.replace(self._path(teacher_version, data))

    def log_probs(self, teacher: HFClassifier, data: TextDataset) -> np.ndarray:
        """The teacher's log-probabilities on ``data``, from the cache or computed once."""
        path = self._path(teacher.version, data)
        if path.is_file():
            return load_file(str(path))["log_probs"]
        log_probs = log_softmax(teacher.logits(data.texts))
        self.put(teacher.version, data, log_probs)
        return log_probs


def new_student(teacher: HFClassifier, spec: StudentSpec):
    """A fresh, untrained student of ``spec.kind``, initialised from ``teacher``: (model, tokenizer)."""
    if spec.kind == "bow":
        return init_bow_student(teacher, spec.hidden_size, seed=spec.train.seed)
    return init_transformer_student(teacher, spec.layers)


def distill_student(
    teacher: HFClassifier, train: TextDataset, spec: StudentSpec, cache: TeacherCache, progress: bool = True
) -> tuple[HFClassifier, dict]:
    """Train a fresh student on ``train``; returns it and its training metrics."""
    model, tokenizer = new_student(teacher, spec)
    labels = train.label_ids(teacher.labels) if train.labels is not None else None
    teacher_log_probs = cache.log_probs(teacher, train) if spec.train.mode != "hard" else None
    model.to(teacher.device)
    metrics = train_student(model, tokenizer, train.texts, labels, teacher_log_probs, spec.train, progress=progress)
    return HFClassifier(model, tokenizer, version="unregistered", max_length=spec.train.max_length), metrics


def fit_student_policy(
    student: HFClassifier, teacher: HFClassifier, validation: TextDataset, cache: TeacherCache, goal: str
) -> EscalationPolicy:
    """Temperature and threshold for ``student`` meeting ``goal`` on the validation split."""
    teacher_probs = np.exp(cache.log_probs(teacher, validation))
    labels = validation.label_ids(teacher.labels) if validation.labels is not None else None
    return fit_policy(student.predict_proba(validation.texts), teacher_probs, labels, goal)


def register_model(
    registry: Registry, model: HFClassifier, meta: ModelMeta, promote: bool = True
) -> ModelMeta:
    """Save ``model`` as the new version ``meta.version`` and (by default) make it current."""
    with registry.stage(meta.role) as staged:
        model.save(staged)
        registry.register(staged, meta)
    if promote:
        registry.promote(meta.role, meta.version, note=f"registered by {meta.kind}")
    model.version, model.meta = meta.version, meta
    return meta


def data_record(spec: str, splits: DataSplits) -> dict:
    """What a version records of the data it was trained on."""
    return {
        "spec": spec,
        "train_rows": len(splits.train),
        "validation_rows": len(splits.validation),
        "fingerprint": splits.train.fingerprint(),
        "labels": len(splits.train.label_names),
    }


def new_student_meta(teacher: HFClassifier, spec: StudentSpec, data: dict, metrics: dict, policy: EscalationPolicy, parent: str | None) -> ModelMeta:
    """Metadata for a freshly distilled student version."""
    return ModelMeta(
        version=new_version_id("student"),
        role="student",
        kind=f"{spec.kind}-student",
        parent=parent,
        teacher=teacher.version,
        data=data,
        train_config={"kind": spec.kind, "layers": spec.layers, "hidden_size": spec.hidden_size, **spec.train.to_dict()},
        metrics=metrics,
        policy=policy.to_dict(),
    )
