"""A small synthetic intent data set (nothing here assumes Banking77), written in any column
names (importable from every test directory, as ``ports``)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

INTENTS = {
    "weather": ["what is the weather {when}", "will it rain {when}", "is it going to be sunny {when}", "how cold will it be {when}", "forecast for {when} please"],
    "alarm": ["set an alarm for {time}", "wake me up at {time}", "alarm at {time} please", "can you set my alarm to {time}", "i need an alarm {time}"],
    "music": ["play some {genre}", "put on {genre} music", "i want to hear {genre}", "start my {genre} playlist", "play {genre} songs"],
    "balance": ["what is my account balance", "how much money do i have {when}", "show my balance {when}", "check my savings {when}", "how much is left in my account"],
    "transfer": ["send {amount} to my brother", "transfer {amount} to savings", "move {amount} to my other account", "pay {amount} to alice", "wire {amount} abroad"],
}
FILLERS = {
    "when": ["today", "tomorrow", "this weekend", "tonight", "on friday", "next week", "now"],
    "time": ["7 am", "six thirty", "noon", "5:45", "midnight", "8 tomorrow"],
    "genre": ["jazz", "rock", "classical", "hip hop", "country", "lofi"],
    "amount": ["50 dollars", "100 euros", "twenty pounds", "$300", "a thousand"],
}


def make_rows(n_per_label: int, seed: int) -> list[dict]:
    """Templated intent texts with their labels."""
    rng = random.Random(seed)
    rows = []
    for label, templates in INTENTS.items():
        for _ in range(n_per_label):
            text = rng.choice(templates).format(**{k: rng.choice(v) for k, v in FILLERS.items()})
            rows.append({"utterance": text, "intent": label})
    rng.shuffle(rows)
    return rows


def write_dataset(directory: Path, train_per_label: int = 60, test_per_label: int = 20,
                  text_column: str = "utterance", label_column: str = "intent") -> Path:
    """A directory with train.csv, test.jsonl and labels.json in non-default column names (by
    default ones the loader guesses; others need --text-column and --label-column)."""
    directory.mkdir(parents=True, exist_ok=True)
    named = lambda rows: [{text_column: row["utterance"], label_column: row["intent"]} for row in rows]  # noqa: E731
    with (directory / "train.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[text_column, label_column])
        writer.writeheader()
        writer.writerows(named(make_rows(train_per_label, seed=1)))
    with (directory / "test.jsonl").open("w") as f:
        for row in named(make_rows(test_per_label, seed=2)):
            f.write(json.dumps(row) + "\n")
    (directory / "labels.json").write_text(json.dumps(sorted(INTENTS)))
    return directory
