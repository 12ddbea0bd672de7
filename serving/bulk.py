"""The cascade over a data set, as a Ray Data pipeline (the body of ``cascade batch``).

1. ``plan_input`` lists the input files (CSV, JSONL or Parquet: one file, a directory of them, or
   a ``pyarrow.fs``/``fsspec`` URI) and checks that each has the text column.
2. Read tasks turn each file into chunks of rows tagged with their file and row number
   (``source_file``, ``source_row``: the data row for CSV and Parquet, the line for JSONL,
   from 0); a row that cannot be read or has no text carries an ``error`` instead of an answer.
3. ``StudentStage`` actors score every readable row, and ``router.route`` decides, as in the
   served cascade, which rows the teacher must answer.
4. ``TeacherStage`` actors call the teacher on those rows only, a whole block's worth per call
   (full batches), and ``router.settle`` gives each row its tier and cost; each row the teacher
   answered carries its escalation record.
5. The driver writes each finished block's escalation records (``write_records``), then the
   block as one Parquet part, atomically. A re-run reads which rows the parts hold and skips
   them; a record written again keeps its id (derived from the job and the row), so the log's
   readers keep it once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from distill.data import TEXT_COLUMNS
from distill.errors import DistillError
from distill.escalations import EscalationRecord
from distill.metadata import escalation_policy
from router import (ControlSettings, CostModel, LiveEvidence, Route, TeacherBudget, agreement_target, certified_start, parse_goal, route,
                    settle, threshold_grid)

INPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
ANSWER_COLUMNS = ("label", "score", "tier", "escalated", "confidence", "cost", "student_version", "teacher_version", "error", "source_file", "source_row")
INTERNAL = ("_text", "_student_probs", "_confidence", "_escalated", "_reason", "_record")
JOB_FILE, DONE_FILE, PART_PREFIX, TMP_PREFIX = "_job.json", "_SUCCESS", "part-", "_tmp-"


class BulkError(DistillError):
    """A bulk job's input or output cannot be used as given; the message says what was expected."""


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or URI (``pyarrow.fs``'s schemes, else fsspec's)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        try:
            import fsspec
        except ImportError:
            raise BulkError(f"{uri}: pyarrow cannot open this URI and fsspec is not installed") from None
        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class InputPlan:
    """The files of a bulk job, their shared columns and the one holding the text."""

    uri: str
    filesystem: pafs.FileSystem
    files: tuple[str, ...]
    columns: tuple[str, ...]
    text_column: str


def _header(fs: pafs.FileSystem, path: str) -> list[str]:
    """A file's column names: the CSV header, the first JSONL object's keys, the Parquet schema."""
    try:
        if path.endswith(".parquet"):
            with fs.open_input_file(path) as f:
                return pq.read_schema(f).names
        with fs.open_input_stream(path) as f:
            stream = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
            if path.endswith(".csv"):
                return next(csv.reader(stream), [])
            for line in stream:
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise BulkError(f"{path}: the first line is a JSON {type(row).__name__}, expected an object of fields")
                    return list(row)
            return []
    except (OSError, pa.ArrowInvalid, json.JSONDecodeError, csv.Error) as err:
        raise BulkError(f"{path}: cannot read its columns: {err}") from err


def plan_input(uri: str, text_column: str | None = None) -> InputPlan:
    """List and check the input: every file must have the text column (``text_column``, else the
    first of ``TEXT_COLUMNS`` the first file has) and the same columns as the first file."""
    fs, root = resolve_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise BulkError(f"input not found: {uri}")
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(INPUT_SUFFIXES)
                       and not any(part.startswith(("_", ".")) for part in f.path[len(root):].split("/")))
        if not files:
            raise BulkError(f"{uri}: no {', '.join(INPUT_SUFFIXES)} files in this directory")
    elif not root.endswith(INPUT_SUFFIXES):
        raise BulkError(f"{uri}: unsupported file type; expected one of {', '.join(INPUT_SUFFIXES)}")
    else:
        files = [root]
    columns = _header(fs, files[0])
    if not columns:
        raise BulkError(f"{files[0]} is empty: expected a header or a first row")
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        if text_column is None:
            raise BulkError(f"{files[0]}: no text column (tried {', '.join(TEXT_COLUMNS)}); columns are: {', '.join(columns)}; "
                            "name it with --text-column")
    for path in files:
        found = columns if path == files[0] else _header(fs, path)
        if text_column not in found:
            raise BulkError(f"{path}: no text column '{text_column}'; columns are: {', '.join(found) or 'none'}")
        if found != columns:
            raise BulkError(f"{path} has columns {found}, but {files[0]} has {columns}: the files of one job must share their columns")
    return InputPlan(uri, fs, tuple(files), tuple(columns), text_column)


def output_names(columns: Sequence[str]) -> list[str]:
    """Input column names in the output: one that an answer column would hide becomes ``input_<name>``."""
    return [f"input_{c}" if c in ANSWER_COLUMNS else c for c in columns]


def _text_error(value: object) -> str | None:
    """Why a text cell cannot be classified, or None."""
    if value is None:
        return "no text"
    if not isinstance(value, str):
        return f"text is {type(value).__name__}, not a string"
    if not value.strip():
        return "empty text"
    return None


def _as_text(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _tagged(path: str, inputs: pa.Table, text_column: str, numbers: Sequence[int], errors: list[str | None]) -> pa.Table:
    """A chunk of input rows (columns named by ``output_names``) with ``_text`` (None where the
    row has an error: one of ``errors``, or its text's), ``error`` and ``source_*``."""
    values = inputs[output_names([text_column])[0]].to_pylist()
    errors = [err if err is not None else _text_error(value) for err, value in zip(errors, values)]
    texts = [value if err is None else None for err, value in zip(errors, values)]
    return (inputs.append_column("_text", pa.array(texts, pa.string()))
            .append_column("error", pa.array(errors, pa.string()))
            .append_column("source_file", pa.array([path] * len(numbers), pa.string()))
            .append_column("source_row", pa.array(numbers, pa.int64())))


def _chunk(path: str, columns: Sequence[str], text_column: str, rows: list[tuple[int, dict | None, str | None]]) -> pa.Table:
    """Rows read from CSV or JSONL as a tagged chunk; every input column as text (JSON text for
    other JSON values), so that all chunks share one schema."""
    kept = [row or {} for _, row, _ in rows]
    inputs = pa.table({name: pa.array([_as_text(r.get(c)) for r in kept], pa.string()) for c, name in zip(columns, output_names(columns))})
    text_values = [r.get(text_column) for r in kept]  # before _as_text: a number is no text
    errors = [err if err is not None else (_text_error(value) if row is not None else None)
              for (_, row, err), value in zip(rows, text_values)]
    return _tagged(path, inputs, text_column, [n for n, _, _ in rows], errors)


def _invalid_utf8(text: str) -> bool:
    """Whether text decoded with ``surrogateescape`` held bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _csv_rows(f, columns: Sequence[str]) -> Iterator[tuple[int, dict | None, str | None]]:
    """(row number, row or None, error) of a CSV file after its header."""
    stream = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(stream)
    next(reader, None)
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield number, None, f"unreadable CSV row: {err}"
            number += 1
            continue
        if len(values) != len(columns):
            yield number, None, f"{len(values)} fields where the header has {len(columns)}"
        elif any(_invalid_utf8(value) for value in values):
            yield number, None, "not valid UTF-8"
        else:
            yield number, dict(zip(columns, values)), None
        number += 1


def _jsonl_rows(f) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row or None, error) of each non-blank line of a JSONL file."""
    for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape")):
        if not line.strip():
            continue
        if _invalid_utf8(line):
            yield number, None, "not valid UTF-8"
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, None, f"not valid JSON: {err.msg}"
            continue
        yield (number, row, None) if isinstance(row, dict) else (number, None, f"a JSON {type(row).__name__}, not an object")


def read_file(fs: pafs.FileSystem, path: str, columns: Sequence[str], text_column: str, done: np.ndarray, chunk_rows: int) -> Iterator[pa.Table]:
    """A file's rows in chunks of up to ``chunk_rows``, leaving out the row numbers in ``done`` (sorted)."""
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            start = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=list(columns)):
                numbers = np.arange(start, start + batch.num_rows)
                start += batch.num_rows
                keep = ~np.isin(numbers, done, assume_unique=True)
                if keep.any():
                    inputs = pa.Table.from_batches([batch]).filter(pa.array(keep)).rename_columns(output_names(columns))
                    yield _tagged(path, inputs, text_column, numbers[keep].tolist(), [None] * int(keep.sum()))
        return
    with fs.open_input_stream(path) as f:
        rows = _csv_rows(f, columns) if path.endswith(".csv") else _jsonl_rows(f)
        pending: list = []
        done_set = set(done.tolist())
        for row in rows:
            if row[0] in done_set:
                continue
            pending.append(row)
            if len(pending) == chunk_rows:
                yield _chunk(path, columns, text_column, pending)
                pending = []
        if pending:
            yield _chunk(path, columns, text_column, pending)


def _read_files(batch: pa.Table, plan: InputPlan, done: dict[str, np.ndarray], chunk_rows: int) -> Iterator[pa.Table]:
    """The read step: a batch of file paths in, chunks of their rows out."""
    for path in batch["path"].to_pylist():
        yield from read_file(plan.filesystem, path, plan.columns, plan.text_column, done.get(path, np.zeros(0, np.int64)), chunk_rows)


def _load(path: str, device: str | None, threads: int | None):
    import torch

    from distill.backends import HFClassifier

    if threads:
        torch.set_num_threads(threads)
    return HFClassifier.load(path, device=device)


class StudentStage:
    """An actor of the student's pool: scores each readable row and routes it (``router.route``)."""

    def __init__(self, model: str, threshold: float | None, device: str | None = None, threads: int | None = None):
        from distill.metadata import escalation_policy

        self.model = _load(model, device, threads)
        self.policy = escalation_policy(self.model.meta)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = batch["_text"].is_valid().to_numpy(zero_copy_only=False)
        texts = batch["_text"].filter(pa.array(ok)).to_pylist()
        n, width = len(batch), len(self.model.labels)
        probs = np.zeros((n, width), np.float32)
        confidence, escalated, reason = np.zeros(n), np.zeros(n, bool), np.full(n, None, object)
        if texts:
            probs[ok] = self.model.predict_proba(texts)
            plan = route("cascade", len(texts), probs[ok], self.policy, self.threshold)
            confidence[ok], escalated[ok], reason[ok] = plan.confidence, plan.escalated, plan.reason
        return (batch.append_column("_student_probs", pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), width))
                .append_column("_confidence", pa.array(confidence, mask=~ok))
                .append_column("_escalated", pa.array(escalated))
                .append_column("_reason", pa.array(reason.tolist(), pa.string())))


def record_id(job_id: str, source_file: str, source_row: int) -> str:
    """An escalation record's id: the same for the same row of the same job, so a re-run's copy is a duplicate."""
    return hashlib.sha256(f"{job_id}\x1f{source_file}\x1f{source_row}".encode()).hexdigest()[:32]


class TeacherStage:
    """An actor of the teacher's pool: answers the escalated rows of a block in one call, settles
    every row (``router.settle``), and attaches each escalated row's escalation record."""

    def __init__(self, model: str, job_id: str, student_version: str, costs: CostModel,
                 device: str | None = None, threads: int | None = None):
        self.model = _load(model, device, threads)
        self.job_id, self.student_version, self.costs = job_id, student_version, costs

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = batch["_text"].is_valid().to_numpy(zero_copy_only=False)
        n = len(batch)
        probs = batch["_student_probs"].combine_chunks().flatten().to_numpy().reshape(n, -1).copy()
        student_probs = probs.copy()
        escalated = batch["_escalated"].to_numpy(zero_copy_only=False) & ok
        asked = np.flatnonzero(escalated)
        texts = batch["_text"].to_pylist()
        teacher = self.model.predict_proba([texts[i] for i in asked]) if len(asked) else np.zeros((0, probs.shape[1]))
        probs[asked] = teacher
        reason = np.array(batch["_reason"].to_pylist(), object)
        confidence = batch["_confidence"].to_numpy(zero_copy_only=False)
        none = np.zeros(int(ok.sum()), bool)
        plan = Route("cascade", reason[ok], confidence[ok], escalated[ok], none, none)
        decisions = settle(plan, teacher_answered=True, costs=self.costs)
        labels = self.model.labels
        top = probs.argmax(axis=1)
        tier = np.full(n, None, object)
        tier[ok] = np.where(decisions.answered_by_teacher, "teacher", "student")
        cost = np.zeros(n)
        cost[ok] = decisions.cost
        records: list[str | None] = [None] * n
        files, rows = batch["source_file"].to_pylist(), batch["source_row"].to_pylist()
        for j, i in enumerate(asked):
            records[i] = EscalationRecord.consulted(
                labels, texts[i], str(reason[i]), student_probs[i], teacher[j], self.student_version, self.model.version,
                id=record_id(self.job_id, files[i], rows[i]), request_id=f"batch-{self.job_id}",
            ).model_dump_json()
        columns = {
            "label": pa.array([labels[t] for t in top], pa.string(), mask=~ok),
            "score": pa.array(probs[np.arange(n), top].astype(np.float64), mask=~ok),
            "tier": pa.array(tier.tolist(), pa.string()),
            "escalated": pa.array(escalated, mask=~ok),
            "confidence": pa.array(confidence, mask=~ok),
            "cost": pa.array(cost, mask=~ok),
            "student_version": pa.array([self.student_version] * n, pa.string()),
            "teacher_version": pa.array([self.model.version] * n, pa.string()),
            "_record": pa.array(records, pa.string()),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch


class Certification(BaseModel):
    """How a bulk job's threshold was certified for its goal, as served traffic's is
    (``router.certify``): on a uniform sample of the input that the teacher labelled first, or
    from live control's evidence of the same student."""

    source: Literal["sample", "live"]
    goal: str
    threshold: float
    bound: float | None  # the lower bound of the agreement with the teacher at that threshold
    target: float | None
    held: bool
    sample_rows: int = 0  # rows the teacher labelled to certify (source "sample")

    def line(self) -> str:
        where = f"a sample of {self.sample_rows} rows the teacher labelled" if self.source == "sample" else "live control's evidence"
        return (f"threshold {self.threshold:.4f} certified for {self.goal} on {where}: bound {self.bound:.4f}" if self.bound is not None
                else f"threshold {self.threshold:.4f} from {where}") + ("" if self.held else " (the goal is not shown to hold: every row to the teacher)")


def sample_texts(plan: InputPlan, rows: int, seed: int = 0, read_at_most: int = 200_000) -> list[str]:
    """A uniform sample of up to ``rows`` valid texts of the input (of its first ``read_at_most``)."""
    texts: list[str] = []
    for path in plan.files:
        for chunk in read_file(plan.filesystem, path, plan.columns, plan.text_column, np.zeros(0, np.int64), 10_000):
            texts += [t for t in chunk["_text"].to_pylist() if t is not None]
            if len(texts) >= read_at_most:
                break
        if len(texts) >= read_at_most:
            break
    if len(texts) <= rows:
        return texts
    picked = np.random.default_rng(seed).choice(len(texts), size=rows, replace=False)
    return [texts[i] for i in sorted(picked)]


def certify_on_sample(student, teacher, texts: list[str], goal: str, settings: ControlSettings = ControlSettings()) -> Certification:
    """The cheapest threshold that fixed-sequence testing certifies for ``goal`` on ``texts``,
    every one labelled by the teacher (a uniform sample: each known, weighing alike)."""
    parsed = parse_goal(goal)
    policy = escalation_policy(student.meta)
    if isinstance(parsed, TeacherBudget):
        raise BulkError(f"goal {goal} caps the teacher's share: a bulk job takes its threshold as fitted, nothing to certify")
    student_probs = student.predict_proba(texts)
    teacher_top = teacher.predict_proba(texts).argmax(axis=1)
    evidence = LiveEvidence(threshold_grid(policy.measure, student_probs.shape[1]))
    evidence.add(policy.scores(student_probs), np.ones(len(texts), bool), student_probs.argmax(axis=1) == teacher_top)
    target = agreement_target(parsed, policy.validation)
    step = certified_start(evidence, parsed, validation=policy.validation, settings=settings)
    return Certification(source="sample", goal=str(parsed), threshold=step.threshold, bound=step.bound, target=target,
                         held=step.held, sample_rows=len(texts))


class BulkJob(BaseModel):
    """What an output directory's ``_job.json`` records: a re-run resumes only the same job."""

    job_id: str = Field(default_factory=lambda: secrets.token_hex(8))
    input: str
    text_column: str
    student: str  # model directories, pinned for every run of the job
    teacher: str
    student_version: str
    teacher_version: str
    threshold: float | None  # the override in force when the job started; None: the student's fitted one
    certification: Certification | None = None  # how that threshold was certified, when it was
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def differences(self, other: "BulkJob") -> list[str]:
        """The settings in which ``other`` is another job (a re-run keeps the recorded models and threshold)."""
        keys = ("input", "text_column")  # models and threshold stay the recorded ones
        return [f"{k} {getattr(self, k)!r} (now {getattr(other, k)!r})" for k in keys if getattr(self, k) != getattr(other, k)]


class OutputDir:
    """The output of a bulk job: Parquet parts written atomically, ``_job.json`` and, once every
    row is written, ``_SUCCESS`` with the job's summary."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = resolve_uri(uri)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _read_json(self, name: str) -> dict | None:
        if self.fs.get_file_info(self._path(name)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self._path(name)) as f:
            return json.loads(f.read())

    def _write_json(self, name: str, value: dict) -> None:
        with self.fs.open_output_stream(self._path(name)) as f:
            f.write(json.dumps(value, indent=2).encode() + b"\n")

    def resumable(self, overwrite: bool) -> bool:
        """Whether ``start`` would resume an unfinished job here (its recorded threshold stands)."""
        if overwrite or self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return False
        return self._read_json(JOB_FILE) is not None and self._read_json(DONE_FILE) is None

    def start(self, job: BulkJob, overwrite: bool) -> tuple[BulkJob, bool]:
        """The job to run and whether it resumes an unfinished run of the same job. An output path
        that exists is refused unless ``overwrite`` (which deletes it), or unless it holds an
        unfinished run of this same job, which is resumed."""
        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.NotFound and overwrite:
            (self.fs.delete_dir if info.type == pafs.FileType.Directory else self.fs.delete_file)(self.root)
        elif info.type == pafs.FileType.File:
            raise BulkError(f"output {self.uri} exists and is a file; choose another path or pass --overwrite")
        elif info.type == pafs.FileType.Directory:
            previous = self._read_json(JOB_FILE)
            if previous is None:
                raise BulkError(f"output {self.uri} exists and is not a bulk job's output; choose another path or pass --overwrite")
            if self._read_json(DONE_FILE) is not None:
                raise BulkError(f"output {self.uri} holds a finished job; pass --overwrite to run it again")
            earlier = BulkJob.model_validate(previous)
            if differences := earlier.differences(job):
                raise BulkError(f"output {self.uri} holds an unfinished job with other settings: {'; '.join(differences)}; "
                                "run that job again to finish it, or pass --overwrite")
            for stale in self.fs.get_file_info(pafs.FileSelector(self.root)):
                if stale.base_name.startswith(TMP_PREFIX):  # parts a crash left half-written
                    self.fs.delete_file(stale.path)
            return earlier, True
        self.fs.create_dir(self.root)
        self._write_json(JOB_FILE, job.model_dump())
        return job, False

    def parts(self) -> list[str]:
        """The paths of the parts written so far."""
        found = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(f.path for f in found if f.base_name.startswith(PART_PREFIX) and f.base_name.endswith(".parquet"))

    def done_rows(self) -> dict[str, np.ndarray]:
        """Per input file, the sorted row numbers the written parts hold."""
        done: dict[str, list[np.ndarray]] = {}
        for part in self.parts():
            with self.fs.open_input_file(part) as f:
                table = pq.read_table(f, columns=["source_file", "source_row"])
            files, rows = np.array(table["source_file"].to_pylist(), object), table["source_row"].to_numpy()
            for name in set(files.tolist()):
                done.setdefault(name, []).append(rows[files == name])
        return {name: np.unique(np.concatenate(chunks)) for name, chunks in done.items()}

    def write_part(self, table: pa.Table) -> None:
        """Write one part under a temporary name, then move it into place."""
        name = f"{PART_PREFIX}{time.time_ns()}-{secrets.token_hex(3)}.parquet"
        with self.fs.open_output_stream(self._path(TMP_PREFIX + name)) as f:
            pq.write_table(table, f)
        self.fs.move(self._path(TMP_PREFIX + name), self._path(name))

    def finish(self, summary: "BulkSummary") -> None:
        """Mark the job finished, with its summary."""
        self._write_json(DONE_FILE, summary.model_dump())


class BulkSettings(BaseModel):
    """How the pipeline runs: block size, actor pools and their resources."""

    rows_per_batch: int = Field(2048, ge=1)  # rows per student and teacher call; the teacher sees the escalated share of them
    rows_per_part: int = Field(65536, ge=1)  # rows per output part: what a crash can lose, and a re-run answers again
    student_actors: int = Field(1, ge=1)  # the most actors of each pool (a pool grows from one while work waits)
    teacher_actors: int = Field(1, ge=1)
    student_cpus: float = Field(0.5, gt=0)
    teacher_cpus: float = Field(1.0, gt=0)
    teacher_threads: int | None = Field(None, ge=1)  # torch threads of a teacher actor (default: its CPUs, at least 1)
    num_gpus: float = Field(0.0, ge=0)  # per teacher actor
    device: str | None = None  # of both models; default CUDA when present


class BulkSummary(BaseModel):
    """What one run of a bulk job did."""

    rows: int = 0  # rows answered by this run
    bad_rows: int = 0  # rows reported with an error instead of an answer
    skipped_rows: int = 0  # rows an earlier run already wrote
    teacher_rows: int = 0
    cost: float = 0.0
    teacher_only_cost: float = 0.0
    seconds: float = 0.0  # from the command's start, Ray start-up included
    student_version: str = ""
    teacher_version: str = ""
    bad_examples: list[str] = []  # the first few bad rows: file, row, why
    certification: Certification | None = None  # how the job's threshold was certified (None: given, or fitted)

    @property
    def teacher_share(self) -> float:
        return self.teacher_rows / self.rows if self.rows else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def teacher_share_with_sample(self) -> float:
        """The teacher's share of the rows, counting the rows it labelled to certify the threshold."""
        sample = self.certification.sample_rows if self.certification is not None and self.certification.source == "sample" else 0
        return (self.teacher_rows + sample) / self.rows if self.rows else 0.0

    def line(self) -> str:
        """One human-readable line."""
        ratio = self.cost / self.teacher_only_cost if self.teacher_only_cost else 0.0
        certified = f"; {self.certification.line()}" if self.certification is not None else ""
        return (f"{self.rows} rows answered ({self.skipped_rows} already written, {self.bad_rows} bad), teacher share {self.teacher_share:.2%}"
                f"{f' ({self.teacher_share_with_sample:.2%} with the certification sample)' if self.certification and self.certification.source == 'sample' else ''}, "
                f"cost {self.cost:.0f} vs teacher-only {self.teacher_only_cost:.0f} ({ratio:.1%}), {self.seconds:.1f} s, {self.texts_per_s:.0f} texts/s{certified}")


def run_bulk(plan: InputPlan, out: OutputDir, job: BulkJob, costs: CostModel, settings: BulkSettings,
             write_records: Callable[[list[EscalationRecord]], object], started: float | None = None,
             progress: bool = True) -> BulkSummary:
    """Run the pipeline (module docstring) on the connected Ray cluster; rows ``out`` already holds are skipped."""
    import ray
    from tqdm.auto import tqdm

    started = time.monotonic() if started is None else started
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, ours, in rows
    context.print_on_execution_start = False
    done = out.done_rows()
    summary = BulkSummary(skipped_rows=sum(len(rows) for rows in done.values()), student_version=job.student_version,
                          teacher_version=job.teacher_version, certification=job.certification)
    files = ray.data.from_items([{"path": f} for f in plan.files], override_num_blocks=len(plan.files))
    threads = settings.teacher_threads or max(1, math.floor(settings.teacher_cpus))
    ds = (
        files.map_batches(_read_files, fn_kwargs={"plan": plan, "done": done, "chunk_rows": settings.rows_per_batch},
                          batch_size=1, batch_format="pyarrow", num_cpus=0.1)
        .map_batches(StudentStage, fn_constructor_args=(job.student, job.threshold, settings.device, 1), batch_size=settings.rows_per_batch,
                     batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.student_actors),
                     num_cpus=settings.student_cpus)
        .map_batches(TeacherStage, fn_constructor_args=(job.teacher, job.job_id, job.student_version, costs, settings.device, threads),
                     batch_size=settings.rows_per_batch, batch_format="pyarrow",
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.teacher_actors),
                     num_cpus=settings.teacher_cpus, num_gpus=settings.num_gpus)
    )
    bar = tqdm(desc="cascade batch", unit="row", disable=not progress)
    for block in ds.iter_batches(batch_size=settings.rows_per_part, batch_format="pyarrow"):
        records = [EscalationRecord.model_validate_json(r) for r in block["_record"].to_pylist() if r is not None]
        write_records(records)
        out.write_part(block.drop_columns(list(INTERNAL)))
        errors = block["error"].to_pylist()
        bad = [i for i, e in enumerate(errors) if e is not None]
        summary.bad_rows += len(bad)
        summary.rows += len(block) - len(bad)
        summary.teacher_rows += len(records)
        summary.cost += float(np.nansum(block["cost"].to_numpy(zero_copy_only=False)))
        summary.teacher_only_cost += costs.teacher_units * (len(block) - len(bad))
        if len(summary.bad_examples) < 10:
            files, rows = block["source_file"].to_pylist(), block["source_row"].to_pylist()
            summary.bad_examples += [f"{files[i]} row {rows[i]}: {errors[i]}" for i in bad[: 10 - len(summary.bad_examples)]]
        bar.update(len(block))
    bar.close()
    summary.seconds = round(time.monotonic() - started, 3)
    out.finish(summary)
    return summary
