"""Escalation records of a label-only (black-box) teacher: compatible with older logs, and
counted by the refresh round's data builder, which then trains label-only."""

from __future__ import annotations

import json
import shutil

import numpy as np

from distill.config import RefreshConfig, TrainConfig
from distill.data import load_splits
from distill.escalations import EscalationRecord
from distill.refresh import refresh
from distill.refresh_data import build_dataset
from distill.registry import Registry
from serving.segments import SegmentWriter


def record(text: str, label_only: bool, version: str) -> EscalationRecord:
    return EscalationRecord(request_id="r", text=text, reason="unsure", student_label=None, teacher_label="alarm",
                            student_probs=None, teacher_probs=[1.0, 0, 0, 0, 0], student_version="s",
                            teacher_version=version, teacher_label_only=label_only)


def test_records_written_before_the_field_existed_read_as_soft():
    old = record("x", False, "t").model_dump()
    del old["teacher_label_only"]
    assert EscalationRecord.model_validate_json(json.dumps(old)).teacher_label_only is False


def test_refresh_data_counts_label_only_rows_and_names_their_teachers(tiny_data):
    splits = load_splits(str(tiny_data))
    records = [record(f"odd text {i}", True, "remote:llm@host") for i in range(6)] + [record("a soft one", False, "teacher-1")]
    base = np.zeros((len(splits.train), len(splits.train.label_names)))
    data = build_dataset(records, splits, base, splits.train.label_names, RefreshConfig(min_replay=10))
    assert data.stats["label_only_rows"] == 6 and data.stats["escalation_rows"] == 7
    assert data.stats["teacher_versions"] == ["remote:llm@host", "teacher-1"]


def test_a_refresh_round_on_label_only_records_trains_label_only(tiny_home, tiny_data, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)  # the round registers a version; the session's home stays as it was
    SegmentWriter(tmp_path / "log").append([record(f"novel request {i}", True, "remote:llm@host") for i in range(8)])
    registry = Registry(home / "registry")
    config = RefreshConfig(min_replay=40, train=TrainConfig(epochs=1))
    report = refresh(registry, home, load_splits(str(tiny_data)), tmp_path / "log", config, "tiny", progress=False)
    assert report["data"]["label_only_rows"] == 8
    assert registry.meta("student", report["version"]).train_config["mode"] == "label-only"
