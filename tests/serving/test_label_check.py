"""A student and a teacher with different label lists are refused at start-up, naming the labels
(read from their config.json, without loading weights or starting Ray)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from distill.registry import Registry
from serving.app import check_label_lists
from serving.config import CascadeConfig, ConfigError


def relabel_teacher(home: Path, rename: dict[str, str] | None = None, reverse: bool = False) -> None:
    """Edit the current teacher's label list in place (registered versions are read-only: lift that first)."""
    config = Registry(home / "registry").current_path("teacher") / "config.json"
    os.chmod(config, config.stat().st_mode | stat.S_IWUSR)
    raw = json.loads(config.read_text())
    labels = [raw["id2label"][str(i)] for i in range(len(raw["id2label"]))]
    labels = [(rename or {}).get(label, label) for label in (labels[::-1] if reverse else labels)]
    raw["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config.write_text(json.dumps(raw))


def test_a_matching_pair_passes(tiny_home):
    check_label_lists(CascadeConfig(home=tiny_home))


def test_other_labels_are_named(tiny_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    relabel_teacher(home, rename={"music": "songs"})
    with pytest.raises(ConfigError, match=r"only the student has \['music'\]; only the teacher has \['songs'\]"):
        check_label_lists(CascadeConfig(home=home))


def test_the_same_labels_in_another_order_are_refused_too(tiny_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    relabel_teacher(home, reverse=True)
    with pytest.raises(ConfigError, match="the same labels in another order: at index 0"):
        check_label_lists(CascadeConfig(home=home))
