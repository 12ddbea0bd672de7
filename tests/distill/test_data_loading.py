"""Data loaders: formats, column guessing, the validation split, and the errors users see."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.data import load_file, load_splits, split_validation
from distill.errors import DataError


def test_directory_with_csv_train_and_jsonl_test(tiny_data):
    splits = load_splits(str(tiny_data))
    assert splits.train.label_names == sorted(["weather", "alarm", "music", "balance", "transfer"])
    assert len(splits.train) + len(splits.validation) == 300
    assert len(splits.test) == 100
    assert not set(splits.train.texts) & set(splits.validation.texts) - set(splits.train.texts)


def test_validation_split_is_deterministic_stratified_and_disjoint(tiny_data):
    full = load_file(tiny_data / "train.csv")
    train_a, val_a = split_validation(full, 0.2, seed=3)
    train_b, val_b = split_validation(full, 0.2, seed=3)
    assert val_a.texts == val_b.texts and train_a.texts == train_b.texts
    assert len(train_a) + len(val_a) == len(full)
    counts = {label: val_a.labels.count(label) for label in set(full.labels)}
    assert set(counts.values()) == {12}  # 20 % of 60 per label


def test_quoted_csv_with_commas_and_newlines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"hello, world",a\n"two\nlines",b\nplain,a\n')
    data = load_file(path)
    assert data.texts == ["hello, world", "two\nlines", "plain"]
    assert data.labels == ["a", "b", "a"]


def test_parquet_and_explicit_columns(tmp_path):
    table = pa.table({"body": ["x", "y", "z"], "y": ["p", "q", "p"]})
    pq.write_table(table, tmp_path / "data.parquet")
    data = load_file(tmp_path / "data.parquet", text_column="body", label_column="y")
    assert data.texts == ["x", "y", "z"] and data.label_names == ["p", "q"]


def test_label_ids_follow_the_given_order(tiny_data):
    data = load_file(tiny_data / "train.csv")
    names = list(reversed(data.label_names))
    ids = data.label_ids(names)
    assert [names[i] for i in ids[:10]] == data.labels[:10]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "data file not found"),
        (lambda d: (d / "f.csv").write_text("text,label\n"), "is empty"),
        (lambda d: (d / "f.csv").write_text("words,label\nhi,a\n"), "cannot find a text column"),
        (lambda d: (d / "f.txt").write_text("hi"), "unsupported file type"),
        (lambda d: (d / "f.jsonl").write_text('{"text": "a", "label": "b"}\n{broken\n'), "cannot parse as jsonl"),
    ],
)
def test_clear_errors(tmp_path, setup, message):
    setup(tmp_path)
    files = [p for p in tmp_path.iterdir()] or [tmp_path / "missing.csv"]
    with pytest.raises(DataError, match=message):
        load_file(files[0])


def test_unknown_label_is_named(tiny_data):
    data = load_file(tiny_data / "train.csv")
    with pytest.raises(DataError, match="label\\(s\\) the model does not know: 'alarm'"):
        data.label_ids([n for n in data.label_names if n != "alarm"])


def test_missing_named_column_lists_columns(tiny_data):
    with pytest.raises(DataError, match="no text column 'body'; columns are: utterance, intent"):
        load_splits(str(tiny_data), text_column="body")


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        load_splits(str(tmp_path / "nope"))


def test_test_label_outside_training_labels(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(40)))
    (tmp_path / "test.csv").write_text("text,label\nq,c\n")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="'c'"):
        load_splits(str(tmp_path))


def test_fingerprint_changes_with_content(tiny_data):
    data = load_file(tiny_data / "train.csv")
    assert data.fingerprint() == load_file(tiny_data / "train.csv").fingerprint()
    assert data.subset(np.arange(10)).fingerprint() != data.fingerprint()
