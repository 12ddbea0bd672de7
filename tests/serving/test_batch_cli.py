"""``cascade batch``: bad inputs refused before Ray starts, and (slow, one local Ray cluster for
the module) the whole pipeline: answers equal to the served cascade's, escalations in the log,
a re-run after a crash that answers only what was not written."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.escalations import read_records
from distill.registry import Registry
from serving.cli import main


def test_bad_inputs_are_refused_with_the_problem_named(tiny_home: Path, tmp_path: Path, capsys):
    (tmp_path / "no_text.csv").write_text("id,body\n1,hi\n")
    (tmp_path / "ok.csv").write_text("text\nhi\n")
    (tmp_path / "taken").mkdir()
    cases = [
        (["--input", str(tmp_path / "no_text.csv")], "no text column (tried text"),
        (["--input", str(tmp_path / "no_text.csv"), "--text-column", "message"], "no text column 'message'; columns are: id, body"),
        (["--input", str(tmp_path / "missing.jsonl")], "input not found"),
        (["--input", str(tmp_path / "ok.csv"), "--output", str(tmp_path / "taken")], "exists and is not a bulk job's output"),
    ]
    for flags, message in cases:
        argv = ["batch", "--home", str(tiny_home), "--output", str(tmp_path / "out"), *flags]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["batch", "--input", "x.csv", "--output", "y", "--rows-per-batch", "0"])
    assert "must be at least 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def unsure_home(tiny_home: Path, tiny_data: Path, tmp_path_factory) -> Path:
    """A copy of the tiny home whose current student leaves some of the tiny test rows unsure."""
    from tests.serving.test_bulk import unsure_student

    home = tmp_path_factory.mktemp("batch") / "home"
    shutil.copytree(tiny_home, home)
    (home.parent / "tiny-data-texts.jsonl").write_text((tiny_data / "test.jsonl").read_text())
    student_dir, _ = unsure_student(home)
    Registry(home / "registry").promote("student", Path(student_dir).name)
    return home


def _served(home: Path, texts: list[str]):
    """The served cascade's answers (``Cascade`` driven directly) with the home's current models."""
    from distill.backends import HFClassifier
    from router import CostModel
    from serving.api import ClassifyOptions
    from serving.cascade import Cascade, ModelOutput

    registry = Registry(home / "registry")
    student, teacher = HFClassifier.load(registry.current_path("student")), HFClassifier.load(registry.current_path("teacher"))

    def client(model):
        async def predict(batch: list[str]) -> ModelOutput:
            return ModelOutput(model.predict_proba(batch), model.version, model.meta.policy if model.meta else None)
        return predict

    async def append(records):
        return len(records)

    cascade = Cascade(client(student), client(teacher), append, student.labels, CostModel())
    return asyncio.run(cascade.classify(texts, ClassifyOptions())).predictions


@pytest.mark.slow
def test_batch_answers_as_served_and_logs_escalations(ray_cluster, unsure_home: Path, tiny_data: Path, tmp_path: Path, capsys):
    out, log = tmp_path / "out", tmp_path / "log"
    argv = ["batch", "--home", str(unsure_home), "--input", str(tiny_data / "test.jsonl"), "--output", str(out),
            "--log", str(log), "--rows-per-batch", "16", "--no-certify", "--json", "-q"]  # at the fitted threshold, as _served
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out).sort_by("source_row")
    texts = [json.loads(line)["utterance"] for line in (tiny_data / "test.jsonl").read_text().splitlines()]
    served = _served(unsure_home, texts)
    assert table["utterance"].to_pylist() == texts  # the input's columns come along
    assert table["intent"].to_pylist() == [json.loads(line)["intent"] for line in (tiny_data / "test.jsonl").read_text().splitlines()]
    assert table["label"].to_pylist() == [p.label for p in served]
    assert table["tier"].to_pylist() == [p.tier for p in served]
    assert table["escalated"].to_pylist() == [p.escalated for p in served]
    np.testing.assert_allclose(table["confidence"].to_numpy(), [p.confidence for p in served], atol=1e-5)
    teacher_rows = sum(p.tier == "teacher" for p in served)
    assert summary["rows"] == len(texts) and summary["teacher_rows"] == teacher_rows > 0 and summary["bad_rows"] == 0
    records = read_records(log)
    assert len(records) == teacher_rows and {r.reason for r in records} == {"unsure"}
    assert {r.student_version for r in records} == set(table["student_version"].to_pylist())

    assert main(argv) == 2  # a finished job is not run again ...
    assert "holds a finished job; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rerun_after_a_crash_answers_only_what_was_not_written(ray_cluster, unsure_home: Path, tiny_data: Path, tmp_path: Path,
                                                                 capsys, monkeypatch):
    from serving.bulk import OutputDir

    out, log = tmp_path / "out", tmp_path / "log"
    argv = ["batch", "--home", str(unsure_home), "--input", str(tiny_data / "test.jsonl"), "--output", str(out),
            "--log", str(log), "--rows-per-batch", "10", "--rows-per-part", "10", "--json", "-q"]
    write_part = OutputDir.write_part
    written = []

    def crash_after_two(self, table):
        if len(written) == 2:
            raise KeyboardInterrupt  # the job dies between a block's records and its part
        written.append(len(table))
        write_part(self, table)

    monkeypatch.setattr(OutputDir, "write_part", crash_after_two)
    assert main(argv) == 130
    monkeypatch.setattr(OutputDir, "write_part", write_part)
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "resuming the unfinished job" in captured.err
    total = len((tiny_data / "test.jsonl").read_text().splitlines())
    assert summary["skipped_rows"] == sum(written) == 20 and summary["rows"] == total - 20
    rows = pq.read_table(out)["source_row"].to_pylist()
    assert sorted(rows) == list(range(total))  # every row once
    teacher_rows = int(np.sum(np.array(pq.read_table(out)["tier"].to_pylist()) == "teacher"))
    assert len(read_records(log)) == teacher_rows  # records the crashed block logged are not counted twice


@pytest.mark.slow
def test_without_live_evidence_the_threshold_is_certified_on_a_sample_first_and_a_rerun_keeps_it(ray_cluster, unsure_home: Path,
                                                                                                 tiny_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["batch", "--home", str(unsure_home), "--input", str(tiny_data / "test.jsonl"), "--output", str(out),
            "--log", str(tmp_path / "log"), "--certify-rows", "40", "--json", "-q"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    certification = summary["certification"]
    assert certification["source"] == "sample" and certification["sample_rows"] == 40 and certification["goal"] == "agreement>=0.97"
    assert certification["held"] and certification["bound"] >= certification["target"] == 0.97
    job = json.loads((out / "_job.json").read_text())
    assert job["threshold"] == certification["threshold"] and job["certification"] == certification  # a rerun resumes at it
    table = pq.read_table(out)
    confident = np.array(table["confidence"].to_pylist()) >= certification["threshold"]
    assert not np.array(table["escalated"].to_pylist())[confident].any()  # answered at the certified threshold


@pytest.mark.slow
def test_address_runs_the_job_on_an_existing_ray_cluster(unsure_home: Path, tiny_data: Path, tmp_path: Path):
    """A head started with `ray start` (its own session, so nothing else's Ray is touched), and
    `cascade batch --address` as another process: the job runs there and answers every row."""
    import subprocess
    import sys

    from ports import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    # a temp dir of its own (short: socket paths are limited), so that the head's address file
    # never makes another process's plain ray.init() join this cluster
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             f"--metrics-export-port={free_port()}", f"--temp-dir={temp_dir}"], env=env, start_new_session=True,
                            stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT)
    try:
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "serving.cli", "batch", "--address", f"127.0.0.1:{port}", "--home", str(unsure_home),
             "--input", str(tiny_data / "test.jsonl"), "--output", str(out), "--log", str(tmp_path / "log"), "--json", "-q"],
            capture_output=True, text=True, timeout=600, env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "head.log").read_text()[-2000:]
        summary = json.loads(done.stdout)
        total = len((tiny_data / "test.jsonl").read_text().splitlines())
        assert summary["rows"] == total and summary["bad_rows"] == 0
        assert sorted(pq.read_table(out)["source_row"].to_pylist()) == list(range(total))
        shared = Path("/tmp/ray/ray_current_cluster")
        assert not shared.exists() or f":{port}" not in shared.read_text(), "the head advertised itself to every ray.init()"
        assert head.poll() is None
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
