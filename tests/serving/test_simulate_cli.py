"""`cascade simulate` end to end on the tiny data set, through the real command in its own
process (its own Ray and Serve): the seed student starts in shadow, so round 1's traffic all
reaches the teacher and lands in the escalation log; later rounds are served by refreshed
students; the report, its JSON form and the PNG hold what the issue names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.backends import HFClassifier
from distill.data import load_splits
from distill.escalations import read_records
from distill.registry import Registry
from router import EscalationPolicy
from serving.cli.simulate import served_figures, with_typos
from serving.config import load_config
from intent_data import write_dataset
from ports import free_port

pytestmark = pytest.mark.slow


def run_simulate(home: Path, data: Path, work: Path, png: Path, *extra: str) -> dict:
    """``cascade simulate`` in ``home`` (two rounds unless ``extra`` says), in its own process; its JSON report.
    Candidates are promoted at once: the tiny data set's rounds of about a hundred items are too
    few for a shadow's verdict (200 known items); promotion through a shadow, the default, is
    judged under load in tests/reliability/test_shared_routing_http.py."""
    config = work / "cascade.yaml"
    config.write_text(json.dumps({"metrics": {"port": free_port()}, "proxy": {"stats_port": free_port(), "metrics_port": free_port()}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "simulate", "--home", str(home), "--data", str(data),
         "--config", str(config), "--port", str(free_port()), "--rounds", "2", "--out", str(png), "--promote-at-once", "--json", *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def simulation(tiny_home: Path, tiny_data: Path, tmp_path_factory) -> tuple[dict, Path, Path]:
    """One two-round simulation on a copy of the tiny registry; (report, home, PNG)."""
    work = tmp_path_factory.mktemp("simulate")
    home = work / "home"
    shutil.copytree(tiny_home, home)  # the teacher is reused; the seed student is registered here
    png = work / "rounds.png"
    return run_simulate(home, tiny_data, work, png), home, png


@pytest.fixture(scope="module")
def second_simulation(simulation, tiny_data: Path, tmp_path_factory) -> dict:
    """The same simulation run again in the first one's home, right after it."""
    _, home, _ = simulation
    work = tmp_path_factory.mktemp("simulate-again")
    return run_simulate(home, tiny_data, work, work / "rounds.png")


def test_report_has_the_documented_json_shape(simulation, tiny_data):
    report, home, png = simulation
    splits = load_splits(str(tiny_data))
    registry = Registry(home / "registry")
    teacher = HFClassifier.load(registry.current_path("teacher"))
    labels = splits.test.label_ids(teacher.labels)
    teacher_top = teacher.predict_proba(splits.test.texts).argmax(1)
    assert report["teacher_accuracy"] == round(float(np.mean(teacher_top == labels)), 4)  # the home's teacher, on the test split
    # the seed slice and the traffic are the training split, less the validation rows carved from it
    assert report["seed_rows"] + report["traffic_rows"] == len(splits.train)
    assert sum(r["traffic"] for r in report["rounds"]) == report["traffic_rows"]
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    config = load_config(None, home=home)
    assert report["promotion"] == "at once"
    for row in report["rounds"]:
        assert {"teacher_share", "test_teacher_share", "cascade_accuracy", "cost_per_1000", "degraded_share", "refresh",
                "control_start", "control_start_threshold", "student_at_end"} <= row.keys()
        assert row["student_at_end"] == row["student"]  # promoted at once: the same student serves the whole round
        assert row["control_start"] == "safe_start"  # no shadow evidence to start from
        # the teacher share is a count of this round's items, and the round's cost follows from it
        answered = round(row["teacher_share"] * row["traffic"])
        assert row["teacher_share"] == round(answered / row["traffic"], 4), row
        per_request = config.routing.student_cost + answered / row["traffic"] * config.routing.teacher_cost
        assert row["cost_per_1000"] == pytest.approx(1000 * per_request, abs=0.05), row
        # the test figures are those of the student that served the round, under its own policy
        student = HFClassifier.load(registry.path("student", row["student"]))
        probs = student.predict_proba(splits.test.texts)
        escalate = EscalationPolicy.from_dict(student.meta.policy).escalate_mask(probs)
        assert row["test_teacher_share"] == round(float(escalate.mean()), 4), row
        answers = np.where(escalate, teacher_top, probs.argmax(1))
        assert row["cascade_accuracy"] == round(float(np.mean(answers == labels)), 4), row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_student_shadows_round_one_and_the_log_holds_all_of_it(simulation):
    report, home, _ = simulation
    first = report["rounds"][0]
    assert first["teacher_share"] == first["test_teacher_share"] == 1.0 and first["degraded_share"] == 0.0
    # a shadowed round costs what the teacher alone costs (plus the student that scored it)
    config = load_config(None, home=home)
    assert first["cost_per_1000"] == pytest.approx(1000 * (config.routing.student_cost + config.routing.teacher_cost))
    # on a shadowed round the cascade answers as the teacher does: its accuracy is the teacher's
    assert first["cascade_accuracy"] == report["teacher_accuracy"]
    seed = Registry(home / "registry").meta("student", first["student"])
    assert seed.policy["threshold"] == 1.0 and seed.policy["goal"].startswith("shadow")
    logged = [r for r in read_records(Path(report["escalation_log"])) if r.student_version == first["student"]]
    assert len(logged) == first["traffic"]
    assert all(r.reason == "unsure" and len(r.teacher_probs) == 5 for r in logged)


def test_round_two_is_served_by_the_refreshed_student(simulation):
    report, home, _ = simulation
    first, second = report["rounds"]
    assert first["refresh"] == "promoted"  # the gate accepts anything that escalates no more than everything
    assert second["student"] != first["student"]
    assert Registry(home / "registry").meta("student", second["student"]).parent == first["student"]
    assert second["teacher_share"] <= first["teacher_share"]


def test_a_second_run_in_the_same_home_learns_from_its_own_traffic_alone(simulation, second_simulation):
    """A run that read the home's log would learn the first run's traffic in its first refresh,
    and its round 2 would hardly need the teacher; each run has a fresh log instead."""
    first, _, _ = simulation
    again = second_simulation
    assert Path(first["escalation_log"]).parent.parent == Path(again["escalation_log"]).parent.parent  # under the one home
    assert first["escalation_log"] != again["escalation_log"]
    logged = read_records(Path(again["escalation_log"]))
    assert {r.student_version for r in logged} == {row["student"] for row in again["rounds"]}  # its own students' traffic only
    assert sum(r.reason != "audit" for r in logged) == sum(round(row["teacher_share"] * row["traffic"]) for row in again["rounds"])
    # round 1 is shadowed in both runs: its refresh learns that round's traffic, the same rows in both
    assert again["rounds"][0]["refresh_rows"] == first["rounds"][0]["refresh_rows"]
    assert again["rounds"][0]["teacher_share"] == 1.0
    assert again["rounds"][1]["teacher_share"] == pytest.approx(first["rounds"][1]["teacher_share"], abs=0.05)


@pytest.fixture(scope="module")
def shifted_simulation(tiny_home: Path, tiny_data: Path, tmp_path_factory) -> tuple[dict, Path]:
    """One round of the whole traffic with typos, on a fresh copy of the tiny registry: enough
    items under one student for online control to step (once per 200 items). Its data set is
    the tiny one's rows under column names no loader guesses, named by --text-column and
    --label-column."""
    work = tmp_path_factory.mktemp("simulate-shifted")
    home = work / "home"
    shutil.copytree(tiny_home, home)
    data = write_dataset(work / "data", text_column="Kundentext", label_column="Ziel (Absicht)")
    assert load_splits(str(data), "Kundentext", "Ziel (Absicht)").test.texts == load_splits(str(tiny_data)).test.texts
    return run_simulate(home, data, work, work / "rounds.png", "--rounds", "1", "--shift", "typos", "--typo-rate", "0.5",
                        "--text-column", "Kundentext", "--label-column", "Ziel (Absicht)"), home


def test_typos_are_seeded_and_edit_about_the_rate_of_words():
    texts = ["please freeze my card right now", "what is the exchange rate today", "ok"] * 200
    shifted = with_typos(texts, 0.3)
    assert shifted == with_typos(texts, 0.3)  # the same stream every run
    assert with_typos(texts, 0.0) == texts and shifted[2::3] == texts[2::3]  # two-letter words are left alone
    edited = [a != b for text, typo in zip(texts, shifted) for a, b in zip(text.split(" "), typo.split(" ")) if len(a) >= 3]
    assert all(len(t.split(" ")) == len(s.split(" ")) for t, s in zip(texts, shifted))
    assert np.mean(edited) == pytest.approx(0.3, abs=0.05)
    with pytest.raises(ValueError, match="probability"):
        with_typos(texts, 1.5)


def test_served_figures_count_escalations_as_agreeing():
    policy = EscalationPolicy(threshold=0.6)
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.7, 0.3]])
    teacher_top = np.array([0, 1, 0, 1])  # the student agrees on item 0 only; item 1 is escalated
    assert served_figures(policy, probs, teacher_top) == (0.5, 0.25)
    assert served_figures(policy, probs, teacher_top, threshold=0.75) == (0.75, 0.5)  # item 3 escalated too


def test_shifted_stream_reports_static_against_controlled(shifted_simulation, tiny_data):
    report, home = shifted_simulation
    assert report["shift"] == "typos" and report["typo_rate"] == 0.5 and report["control"] is True
    (row,) = report["rounds"]
    # the seed student shadows round 1: its static threshold escalates all, which agrees by definition
    assert row["static_threshold"] == 1.0 and row["static_teacher_share"] == row["static_agreement"] == 1.0
    # online control stepped on the round's evidence, and the figures are those of its threshold
    assert row["threshold_source"] == "live" and row["live_estimate"] is not None and row["live_bound"] <= row["live_estimate"]
    assert row["controlled_threshold"] <= 1.0
    for key in ("controlled_agreement", "controlled_teacher_share", "served_agreement", "goal_target"):
        assert 0.0 <= row[key] <= 1.0, (key, row)
    for key in ("controlled_teacher_share", "static_teacher_share", "teacher_share"):
        assert row[key] == round(round(row[key] * row["traffic"]) / row["traffic"], 4), (key, row)  # a count of the round's items
    # only the items the student answers alone can disagree
    assert 1 - row["controlled_agreement"] <= 1 - row["controlled_teacher_share"] + 1e-4
    assert 1 - row["served_agreement"] <= 1 - row["teacher_share"] + 1e-4
    # the traffic sent was the shifted one: the log holds texts that are in no split
    splits = load_splits(str(tiny_data))
    known = set(splits.train.texts) | set(splits.test.texts)
    logged = {r.text for r in read_records(Path(report["escalation_log"]))}
    assert len(logged - known) > len(logged) / 2
