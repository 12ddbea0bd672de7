"""Build the embedded defaults on first use: the teacher (frozen MiniLM and a fitted head),
then a student distilled from it with its escalation policy. Later calls reuse them.
``ensure_goal`` refits the current student's policy when it was fitted for another goal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from distill.backends import HFClassifier
from distill.config import DEFAULT_GOAL, HeadConfig, StudentSpec
from distill.data import load_splits
from distill.metadata import ModelMeta, escalation_policy
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
from distill.settings import DEFAULT_DATA, Paths
from distill.students import build_embedded_teacher
from router import parse_goal

def ensure_models(
    home: Path,
    data: str = DEFAULT_DATA,
    goal: str = DEFAULT_GOAL,
    text_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
) -> Registry:
    """Return the registry at ``home``, first building whichever default model is missing."""
    paths = Paths.under(home)
    registry = Registry(paths.registry)
    need_teacher = registry.current("teacher") is None
    need_student = registry.current("student") is None
    if not (need_teacher or need_student):
        return registry
    started = time.perf_counter()
    splits = load_splits(data, text_column, label_column)
    cache = TeacherCache(paths.cache)
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


def fitted_goal(policy_goal: str) -> str:
    """The goal a fitted policy's ``goal`` text names, without fit notes: "agreement>=0.97" from
    "agreement>=0.97, per-class" or "agreement>=0.97 (unreachable: escalating all)"."""
    return policy_goal.split()[0].rstrip(",") if policy_goal.strip() else ""


def ensure_goal(
    registry: Registry, home: Path, data: str, goal: str,
    text_column: str | None = None, label_column: str | None = None,
) -> ModelMeta | None:
    """Make the current student's policy one fitted for ``goal``. When it was fitted for another,
    fit it on the validation split (keeping its confidence measure and per-class choice) and
    register and promote the result, as ``cascade calibrate --goal`` does; returns that version's
    metadata, or None when the policy already serves ``goal``."""
    from distill.frontier import calibrate  # imported here: only a refit needs it

    wanted = str(parse_goal(goal))
    student = HFClassifier.load(registry.current_path("student"))
    policy = escalation_policy(student.meta)
    if fitted_goal(policy.goal) == wanted:
        return None
    print(f"start-up: student {student.version}'s policy was fitted for '{policy.goal}', not routing.goal "
          f"'{wanted}': fitting it for '{wanted}'", file=sys.stderr, flush=True)
    teacher = HFClassifier.load(registry.current_path("teacher"))
    splits = load_splits(data, text_column, label_column)
    meta, report = calibrate(registry, student, teacher, splits, TeacherCache(Paths.under(home).cache), wanted,
                             policy.measure, per_class=bool(policy.class_thresholds))
    print(f"start-up: registered and promoted student {meta.version} (threshold {report['threshold']:.4f}, "
          f"validation escalation {report['validation']['escalation_rate']:.2%})", file=sys.stderr, flush=True)
    return meta
