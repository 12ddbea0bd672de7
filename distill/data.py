"""Labelled text data sets: Banking77, CSV / JSONL / Parquet files, Hugging Face datasets.

A data *spec* is what a user types after ``--data``:

- ``banking77``: the embedded default (see ``settings.default_banking77_dir``);
- a directory holding ``train.*`` and ``test.*`` files (csv, jsonl, parquet) and optionally a
  label list (``labels.json`` or ``categories.json``);
- a single file, used as the train split (``test`` then comes from ``--test-data``);
- ``hf:NAME`` (or ``hf:NAME:CONFIG``) for a Hugging Face dataset when the hub is reachable.

Text and label columns are found by name (``--text-column`` / ``--label-column``) or guessed
from common names.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from distill.errors import DataError
from distill.settings import default_banking77_dir

TEXT_COLUMNS = ("text", "sentence", "query", "utterance", "question", "input")
LABEL_COLUMNS = ("label", "category", "intent", "labels", "class", "target")
SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
LABEL_LIST_FILES = ("labels.json", "categories.json")


@dataclass(frozen=True)
class TextDataset:
    """Texts with optional string labels; ``label_names`` fixes the label order models use."""

    texts: list[str]
    labels: list[str] | None
    label_names: list[str]
    name: str = "data"

    def __post_init__(self) -> None:
        if not self.texts:
            raise DataError(f"data set '{self.name}' is empty: expected at least one row")
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise DataError(f"data set '{self.name}': {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def label_ids(self, label_names: Sequence[str] | None = None) -> np.ndarray:
        """Labels as integer ids in ``label_names`` order (default: the data set's own)."""
        if self.labels is None:
            raise DataError(f"data set '{self.name}' has no labels")
        names = list(label_names) if label_names is not None else self.label_names
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(self.labels) - index.keys())
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise DataError(
                f"data set '{self.name}' has {len(unknown)} label(s) the model does not know: {shown}"
                f"{' ...' if len(unknown) > 5 else ''}; the model knows {len(names)} labels"
            )
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "TextDataset":
        """The rows at ``indices``, same label list."""
        idx = [int(i) for i in indices]
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx] if self.labels is not None else None,
            label_names=self.label_names,
            name=name or self.name,
        )

    def fingerprint(self) -> str:
        """A short content hash: equal data sets share cached teacher outputs."""
        digest = hashlib.sha256()
        for i, text in enumerate(self.texts):
            digest.update(text.encode())
            digest.update(b"\x1f" + (self.labels[i].encode() if self.labels else b"") + b"\x1e")
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DataSplits:
    """The splits every command uses: ``train`` for fitting, ``validation`` (carved from the
    original train split, never from test) for calibration and gating, ``test`` for reporting."""

    train: TextDataset
    validation: TextDataset
    test: TextDataset | None

    def get(self, split: str) -> TextDataset:
        """One split by name, with an error naming the ones that exist."""
        found = {"train": self.train, "validation": self.validation, "test": self.test}.get(split)
        if found is None:
            raise DataError(f"no split '{split}': expected one of train, validation" + (", test" if self.test else ""))
        return found


def _read_rows(path: Path) -> list[dict]:
    """Rows of a CSV (quoted, multi-line values allowed), JSON Lines, JSON array or Parquet file."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON array of objects")
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot parse as {suffix[1:]}: {err}") from err
    raise DataError(f"{path}: unsupported file type '{suffix}'; expected one of {', '.join(SUFFIXES)}")


def _pick_column(columns: Sequence[str], wanted: str | None, guesses: Sequence[str], what: str, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{where}: no {what} column '{wanted}'; columns are: {', '.join(columns)}")
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    raise DataError(
        f"{where}: cannot find a {what} column (tried {', '.join(guesses)}); "
        f"columns are: {', '.join(columns)}; name it with --{what}-column"
    )


def _rows_to_columns(
    rows: list[dict], where: str, text_column: str | None, label_column: str | None, require_labels: bool
) -> tuple[list[str], list[str] | None]:
    if not rows:
        raise DataError(f"{where} is empty: expected at least one row")
    columns = list(rows[0].keys())
    text_col = _pick_column(columns, text_column, TEXT_COLUMNS, "text", where)
    try:
        label_col = _pick_column(columns, label_column, LABEL_COLUMNS, "label", where)
    except DataError:
        if require_labels or label_column:
            raise
        label_col = None
    texts = [str(row.get(text_col) or "") for row in rows]
    labels = [str(row[label_col]) for row in rows] if label_col else None
    return texts, labels


def _find_split_file(directory: Path, split: str) -> Path | None:
    for suffix in SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _label_list(directory: Path | None, labels: list[str] | None) -> list[str]:
    if directory is not None:
        for name in LABEL_LIST_FILES:
            path = directory / name
            if path.is_file():
                return [str(label) for label in json.loads(path.read_text())]
    if labels is None:
        raise DataError("cannot tell the label list: the data has no label column and no labels.json")
    return sorted(set(labels))


def load_file(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    require_labels: bool = True,
) -> TextDataset:
    """One file as a data set. ``label_names`` fixes the label order (default: sorted labels)."""
    path = Path(path)
    texts, labels = _rows_to_columns(_read_rows(path), str(path), text_column, label_column, require_labels)
    names = list(label_names) if label_names is not None else _label_list(path.parent, labels)
    return TextDataset(texts=texts, labels=labels, label_names=names, name=path.stem)


def _load_hub(spec: str, text_column: str | None, label_column: str | None) -> tuple[dict[str, TextDataset], list[str]]:
    try:
        import datasets
    except ImportError as err:
        raise DataError("hf: data sets need the 'datasets' package: pip install 'distill-cascade[hub]'") from err
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:  # the hub raises many types; all mean "not loadable here"
        raise DataError(f"cannot load Hugging Face data set '{name}': {err}") from err
    out: dict[str, TextDataset] = {}
    names: list[str] | None = None
    for split, table in loaded.items():
        rows = table.to_list()
        texts, labels = _rows_to_columns(rows, f"{name}[{split}]", text_column, label_column, True)
        feature = table.features.get(label_column or "label")
        if names is None:
            names = list(feature.names) if hasattr(feature, "names") else sorted(set(labels or []))
        if hasattr(feature, "names"):
            labels = [feature.names[int(v)] for v in labels or []]
        out[split] = TextDataset(texts, labels, names, name=f"{name}:{split}")
    return out, names or []


def load_splits(
    spec: str = "banking77",
    text_column: str | None = None,
    label_column: str | None = None,
    test_data: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Load a data spec (see the module docstring) into train / validation / test splits."""
    if spec.startswith("hf:"):
        tables, names = _load_hub(spec, text_column, label_column)
        train = tables.get("train")
        if train is None:
            raise DataError(f"{spec}: the data set has no 'train' split; splits are: {', '.join(tables)}")
        test = tables.get("test")
        directory = None
    else:
        path = default_banking77_dir() if spec == "banking77" else Path(spec)
        if not path.exists():
            hint = " (set CASCADE_BANKING77 or pass --data)" if spec == "banking77" else ""
            raise DataError(f"data not found: {path}{hint}")
        directory = path if path.is_dir() else None
        train_file = _find_split_file(path, "train") if directory else path
        if train_file is None:
            raise DataError(f"{path}: no train file; expected train.csv, train.jsonl or train.parquet")
        texts, labels = _rows_to_columns(_read_rows(train_file), str(train_file), text_column, label_column, True)
        names = _label_list(directory or train_file.parent, labels)
        train = TextDataset(texts, labels, names, name=train_file.stem)
        test_file = Path(test_data) if test_data else (_find_split_file(path, "test") if directory else None)
        test = load_file(test_file, text_column, label_column, names) if test_file else None
    if test is not None:
        test.label_ids(train.label_names)  # fail early on a test label the training data lacks
    train_part, validation = split_validation(train, validation_fraction, seed)
    return DataSplits(train=train_part, validation=validation, test=test)


def split_validation(data: TextDataset, fraction: float = 0.1, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """A deterministic stratified split: about ``fraction`` of each label goes to validation."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.array(data.labels if data.labels is not None else ["_"] * len(data))
    held: list[int] = []
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        held.extend(members[: int(round(len(members) * fraction))].tolist())
    if not held or len(held) == len(data):
        raise DataError(f"data set '{data.name}' ({len(data)} rows) is too small to carve a validation split")
    held_set = set(held)
    kept = [i for i in range(len(data)) if i not in held_set]
    return data.subset(kept, name=f"{data.name}:train"), data.subset(sorted(held), name=f"{data.name}:validation")
