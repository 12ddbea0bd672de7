"""Teacher batches that fill across requests: with ``batch_wait_timeout_s: auto`` the teacher's
wait follows its measured batch time, and every batch's size is exported as a histogram."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import CascadeConfig, ConfigError, load_config
from serving.metrics import SPECS
from serving.model_server import AUTO_WAIT_MAX_S, BatchedModel, auto_wait_s


def test_the_auto_wait_is_half_a_batch_capped():
    assert auto_wait_s(0.0) == 0.0
    assert auto_wait_s(0.03) == pytest.approx(0.015)
    assert auto_wait_s(10.0) == AUTO_WAIT_MAX_S


def test_the_teacher_waits_auto_by_default_and_takes_a_fixed_wait(tmp_path: Path):
    assert CascadeConfig().teacher.batch_wait_timeout_s == "auto"
    assert CascadeConfig().student.batch_wait_timeout_s == 0.0
    file = tmp_path / "c.yaml"
    file.write_text("teacher:\n  batch_wait_timeout_s: 0.01\n")
    assert load_config(file).teacher.batch_wait_timeout_s == 0.01
    file.write_text("teacher:\n  batch_wait_timeout_s: soon\n")
    with pytest.raises(ConfigError, match="teacher.batch_wait_timeout_s"):
        load_config(file)


def test_measured_batches_set_the_next_wait_and_are_counted(tiny_home: Path, monkeypatch):
    teacher = BatchedModel("teacher", CascadeConfig(home=tiny_home).paths())
    teacher.configure({"batch_wait_timeout_s": "auto", "max_batch_size": 64})
    assert teacher._batched._get_batch_wait_timeout_s() == 0.0  # nothing measured yet: no wait
    observed = []
    monkeypatch.setattr(teacher.batch_metrics, "observe", lambda name, value: observed.append((name, value)))
    teacher._measured(8, 0.04)
    assert teacher._batched._get_batch_wait_timeout_s() == pytest.approx(0.02)
    teacher._measured(16, 0.09)  # a moving average: one slow batch moves the wait a little
    assert teacher._batched._get_batch_wait_timeout_s() == pytest.approx(auto_wait_s(0.8 * 0.04 + 0.2 * 0.09))
    assert observed == [("cascade_teacher_batch_texts", 8), ("cascade_teacher_batch_texts", 16)]

    teacher.configure({"batch_wait_timeout_s": 0.005})
    teacher._measured(4, 0.5)
    assert teacher._batched._get_batch_wait_timeout_s() == 0.005  # a fixed wait stays fixed
    assert BatchedModel("student", CascadeConfig(home=tiny_home).paths()).batch_metrics is None


def test_the_batch_size_histogram_follows_prometheus_conventions():
    spec = SPECS["cascade_teacher_batch_texts"]
    assert spec.kind == "histogram" and spec.buckets[0] == 1 and list(spec.buckets) == sorted(spec.buckets)
