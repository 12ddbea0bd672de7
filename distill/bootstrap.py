"""Build the embedded defaults on first use: the teacher (frozen MiniLM and a fitted head),
then a student distilled from it with its escalation policy. Later calls reuse them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from distill.backends import HFClassifier
from distill.config import DEFAULT_GOAL, HeadConfig, StudentSpec
from distill.data import load_splits
from distill.metadata import ModelMeta
from distill.pipeline import (
    TeacherCache,
    data_record,
    distill_student,
    fit_student_policy,
    log_softmax,
    new_student_meta,
    register_model,
)
from distill.registry import Registry, new_version_id
from distill.students import build_embedded_teacher

def ensure_models(
    home: Path,
    data: str = "banking77",
    goal: str = DEFAULT_GOAL,
    text_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
) -> Registry:
    """Return the registry at ``home``, first building whichever default model is missing."""
    registry = Registry(home / "registry")
    need_teacher = registry.current("teacher") is None
    need_student = registry.current("student") is None
    if not (need_teacher or need_student):
        return registry
    started = time.perf_counter()
    splits = load_splits(data, text_column, label_column)
    cache = TeacherCache(home / "cache")
    record = data_record(data, splits)
    if need_teacher:
        print(f"bootstrap: building the embedded teacher on {len(splits.train)} rows of '{data}'", file=sys.stderr, flush=True)
        head = HeadConfig()
        teacher, train_logits = build_embedded_teacher(
            splits.train.texts, splits.train.label_ids(), splits.train.label_names, head, progress
        )
        meta = ModelMeta(
            version=new_version_id("teacher"), role="teacher", kind="embedded-teacher",
            data=record, train_config=head.to_dict(),
        )
        register_model(registry, teacher, meta)
        cache.put(meta.version, splits.train, log_softmax(train_logits))
    teacher = HFClassifier.load(registry.current_path("teacher"))
    if need_student:
        print(f"bootstrap: distilling the default student from {teacher.version}", file=sys.stderr, flush=True)
        spec = StudentSpec()
        student, metrics = distill_student(teacher, splits.train, spec, cache, progress)
        policy = fit_student_policy(student, teacher, splits.validation, cache, goal)
        register_model(registry, student, new_student_meta(teacher, spec, record, metrics, policy, parent=None))
    print(f"bootstrap: done in {time.perf_counter() - started:.0f} s; models in {registry.root}", file=sys.stderr, flush=True)
    return registry
