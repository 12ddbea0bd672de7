"""The bulk job's parts without Ray: input planning and reading (bad inputs and rows), the
output directory (refusal, resume), and the two stages, which must answer as the served
``Cascade`` does on the same rows and versions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.bulk import BulkError, BulkJob, OutputDir, StudentStage, TeacherStage, plan_input, read_file, record_id
from distill.registry import Registry
from router import CostModel


def _rows(plan, done=()) -> pa.Table:
    path = plan.files[0]
    return pa.concat_tables(read_file(plan.filesystem, path, plan.columns, plan.text_column, np.array(done, np.int64), 2))


def test_plan_finds_the_text_column_and_lists_a_directory(tmp_path: Path):
    (tmp_path / "a.csv").write_text("id,utterance\n1,hello\n")
    (tmp_path / "b.csv").write_text("id,utterance\n2,bye\n")
    (tmp_path / "_notes.csv").write_text("x\n1\n")  # hidden: not input
    plan = plan_input(str(tmp_path))
    assert plan.text_column == "utterance" and [Path(f).name for f in plan.files] == ["a.csv", "b.csv"]


@pytest.mark.parametrize("setup, problem", [
    (lambda d: (d / "in.csv").write_text("id,body\n1,hi\n"), r"no text column \(tried text"),
    (lambda d: (d / "in.txt").write_text("hi\n"), "unsupported file type"),
    (lambda d: (d / "in.csv").write_text(""), "is empty"),
    (lambda d: (d / "in.jsonl").write_text("[1, 2]\n"), "expected an object"),
    (lambda d: None, "input not found"),
])
def test_bad_input_files_are_refused_naming_the_problem(tmp_path: Path, setup, problem):
    setup(tmp_path)
    target = next((str(p) for p in tmp_path.iterdir()), str(tmp_path / "missing.csv"))
    with pytest.raises(BulkError, match=problem):
        plan_input(target)


def test_a_named_text_column_must_be_in_every_file(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text('{"body": "hi"}\n')
    (tmp_path / "b.jsonl").write_text('{"body": "hi", "other": 1}\n')
    with pytest.raises(BulkError, match=r"b.jsonl has columns \['body', 'other'\], but .*a.jsonl has \['body'\]"):
        plan_input(str(tmp_path), "body")
    (tmp_path / "b.jsonl").unlink()
    with pytest.raises(BulkError, match="no text column 'text'; columns are: body"):
        plan_input(str(tmp_path), "text")


def test_bad_rows_are_kept_with_their_error_and_the_rest_read(tmp_path: Path):
    csv_file = tmp_path / "in.csv"
    csv_file.write_bytes(b'text,label\nhello,a\n"   ",b\nonly one field\nbad \xff byte,c\n"multi\nline",d\n')
    table = _rows(plan_input(str(csv_file)))
    assert table["source_row"].to_pylist() == [0, 1, 2, 3, 4]
    assert table["error"].to_pylist() == [None, "empty text", "1 fields where the header has 2", "not valid UTF-8", None]
    assert table["_text"].to_pylist() == ["hello", None, None, None, "multi\nline"]
    assert table.column_names[:2] == ["text", "input_label"]  # the answer's `label` does not hide the input's

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "hi"}\n\n{"text": 3}\nnot json\n["x"]\n{"other": 1}\n')
    table = _rows(plan_input(str(jsonl)))
    assert table["source_row"].to_pylist() == [0, 2, 3, 4, 5]  # lines; the blank one is no row
    errors = table["error"].to_pylist()
    assert errors[0] is None and errors[1] == "text is int, not a string" and errors[2].startswith("not valid JSON")
    assert errors[3] == "a JSON list, not an object" and errors[4] == "no text"


def test_reading_skips_the_rows_already_done(tmp_path: Path):
    file = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(7)]}), file)
    assert _rows(plan_input(str(file)), done=[0, 3, 4])["source_row"].to_pylist() == [1, 2, 5, 6]


def _job(**changes) -> BulkJob:
    return BulkJob(**{"input": "/in.csv", "text_column": "text", "student": "/s", "teacher": "/t",
                      "student_version": "s1", "teacher_version": "t1", "threshold": None, **changes})


def test_an_existing_output_is_refused_unless_overwrite_or_the_same_unfinished_job(tmp_path: Path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(BulkError, match="not a bulk job's output; choose another path or pass --overwrite"):
        OutputDir(str(tmp_path / "taken")).start(_job(), overwrite=False)
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(BulkError, match="exists and is a file"):
        OutputDir(str(tmp_path / "file.parquet")).start(_job(), overwrite=False)

    out = OutputDir(str(tmp_path / "out"))
    first, resumed = out.start(_job(), overwrite=False)
    assert not resumed
    out.write_part(pa.table({"source_file": ["/in.csv"] * 2, "source_row": [4, 1]}))
    (tmp_path / "out" / "_tmp-part-x.parquet").write_text("torn")
    again, resumed = OutputDir(str(tmp_path / "out")).start(_job(student_version="s2"), overwrite=False)
    assert resumed and again.job_id == first.job_id and again.student_version == "s1"  # the recorded models stay
    assert not (tmp_path / "out" / "_tmp-part-x.parquet").exists()
    assert out.done_rows()["/in.csv"].tolist() == [1, 4]
    with pytest.raises(BulkError, match="unfinished job with other settings: input '/in.csv' \\(now '/other.csv'\\)"):
        out.start(_job(input="/other.csv"), overwrite=False)

    (tmp_path / "out" / "_SUCCESS").write_text("{}")
    with pytest.raises(BulkError, match="holds a finished job; pass --overwrite"):
        out.start(_job(), overwrite=False)
    fresh, resumed = out.start(_job(), overwrite=True)
    assert not resumed and fresh.job_id != first.job_id and out.parts() == []


def unsure_student(home: Path) -> tuple[str, str]:
    """The directories of the current teacher and of a student derived from the current one
    whose policy (temperature 1, threshold at the 30th percentile of its confidence on the tiny
    test texts) leaves some rows unsure: the tiny student is sure of every row otherwise."""
    from distill.backends import HFClassifier
    from distill.metadata import escalation_policy

    registry = Registry(home / "registry")
    current = registry.meta("student", registry.current("student"))
    texts = [json.loads(line)["utterance"] for line in (home.parent / "tiny-data-texts.jsonl").read_text().splitlines()]
    policy = {**(current.policy or {}), "temperature": 1.0, "threshold": 0.0}
    probs = HFClassifier.load(registry.current_path("student")).predict_proba(texts)
    confidence, _ = escalation_policy(policy).scores_and_mask(probs)
    policy["threshold"] = float(np.quantile(confidence, 0.3))
    derived = registry.derive("student", current.version, policy=policy)
    return str(registry.path("student", derived.version)), str(registry.current_path("teacher"))


def test_the_stages_answer_as_the_served_cascade(own_home: Path, tiny_data: Path):
    """Student and teacher stages, called as Ray Data calls them, against ``Cascade`` driven
    directly on the same rows and versions."""
    from distill.backends import HFClassifier
    from serving.api import ClassifyOptions
    from serving.cascade import Cascade, ModelOutput

    (own_home.parent / "tiny-data-texts.jsonl").write_text((tiny_data / "test.jsonl").read_text())
    student_dir, teacher_dir = unsure_student(own_home)
    threshold = None  # the student's fitted one, as served without an override
    plan = plan_input(str(tiny_data / "test.jsonl"))
    rows = pa.concat_tables(read_file(plan.filesystem, plan.files[0], plan.columns, plan.text_column, np.zeros(0, np.int64), 1000))
    student_stage = StudentStage(student_dir, threshold)
    teacher_stage = TeacherStage(teacher_dir, "job1", student_stage.model.version, CostModel())
    out = teacher_stage(student_stage(rows))

    student, teacher = HFClassifier.load(student_dir), HFClassifier.load(teacher_dir)

    def client(model):
        async def predict(texts: list[str]) -> ModelOutput:
            return ModelOutput(model.predict_proba(texts), model.version, model.meta.policy if model.meta else None)
        return predict

    logged = []

    async def append(records):
        logged.extend(records)
        return len(records)

    cascade = Cascade(client(student), client(teacher), append, student.labels, CostModel(), threshold_for=lambda output, policy: threshold)
    served = asyncio.run(cascade.classify(rows["_text"].to_pylist(), ClassifyOptions())).predictions
    assert 0 < sum(p.tier == "teacher" for p in served) < len(served)
    assert out["label"].to_pylist() == [p.label for p in served]
    assert out["tier"].to_pylist() == [p.tier for p in served]
    assert out["escalated"].to_pylist() == [p.escalated for p in served]
    assert out["cost"].to_pylist() == [p.cost for p in served]
    np.testing.assert_allclose(out["confidence"].to_numpy(), [p.confidence for p in served], atol=1e-5)
    np.testing.assert_allclose(out["score"].to_numpy(), [p.score for p in served], atol=1e-5)
    assert out["student_version"].to_pylist() == [student.version] * len(served)
    records = [json.loads(r) for r in out["_record"].to_pylist() if r is not None]
    assert [r["teacher_label"] for r in records] == [r.teacher_label for r in logged]
    assert [r["student_label"] for r in records] == [r.student_label for r in logged]
    assert records[0]["id"] == record_id("job1", plan.files[0], out["source_row"][int(np.argmax(out["escalated"].to_numpy()))].as_py())


class _RuleModel:
    """A classifier over texts that are their own confidence ("0.734"): the student answers label
    0 with that confidence; the teacher disagrees with it below ``wrong_below``."""

    def __init__(self, version: str, teacher_wrong_below: float | None = None):
        self.version, self.wrong_below = version, teacher_wrong_below
        self.meta = {"threshold": 0.1, "goal": "agreement>=0.97"}  # the policy as a replica passes it (escalation_policy)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        c = np.array([float(t) for t in texts])
        if self.wrong_below is None:
            return np.stack([c, 1 - c], axis=1)
        return np.where((c < self.wrong_below)[:, None], [[0.0, 1.0]], [[1.0, 0.0]])


def test_a_threshold_certified_on_a_sample_holds_the_goal_on_the_whole_input():
    from serving.bulk import certify_on_sample

    rng = np.random.default_rng(0)
    population = [f"{c:.4f}" for c in rng.uniform(0.5, 1.0, 20_000)]  # the teacher disagrees below 0.6: 20 % of items
    student, teacher = _RuleModel("student-1"), _RuleModel("teacher-1", teacher_wrong_below=0.6)
    sample = [population[i] for i in rng.choice(len(population), 2_000, replace=False)]
    certified = certify_on_sample(student, teacher, sample, "agreement>=0.97")
    c = np.array([float(t) for t in population])
    served_agreement = 1 - np.mean((c >= certified.threshold) & (c < 0.6))
    assert certified.source == "sample" and certified.held and certified.bound >= 0.97 and certified.sample_rows == 2_000
    assert served_agreement >= 0.97 and certified.threshold < 0.7  # it holds, and it is not the safe start
    with pytest.raises(BulkError, match="caps the teacher"):
        certify_on_sample(student, teacher, sample, "budget<=0.10")
