"""Sources in every local file type the README lists (.jsonl, .json, .parquet, .csv) prepare to the same rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sft_exp.data import prepare_datasets
from tests.data.builders import conversation, settings, write_jsonl

PAIRS = [
    {"prompt": "Reverse abc:", "completion": " cba"},
    {"prompt": "Translate cat", "completion": " chat"},
    {"prompt": "What is two plus three", "completion": " five"},
]


def _rows(tokenizer, path, **values) -> list:
    data = prepare_datasets(settings(sources=[{"path": str(path)}], **values), tokenizer)
    assert data.stats["sources"][path.stem]["rows_read"] == len(PAIRS)
    return sorted((row["input_ids"], row["labels"]) for row in data.train)


def _write(path, rows: list):
    frame = pd.DataFrame(rows)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:  # .json: one JSON array, as many datasets ship
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_prompt_completion_rows_read_the_same_from_every_file_type(word_tokenizer, tmp_path, suffix):
    expected = _rows(word_tokenizer, write_jsonl(tmp_path / "pairs.jsonl", PAIRS))
    assert _rows(word_tokenizer, _write(tmp_path / f"pairs{suffix}", PAIRS)) == expected


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_conversations_read_the_same_from_nested_file_types(word_tokenizer, tmp_path, suffix):
    rows = [
        conversation("Hi", "Bye"),
        conversation("What is two plus three", "five", system="Be brief"),
        conversation("Hello", "Hi there", "Bye", "Bye"),
    ]
    values = dict(chat_template="chatml", assistant_only_loss=True)
    expected = _rows_of(word_tokenizer, write_jsonl(tmp_path / "chats.jsonl", rows), **values)
    assert _rows_of(word_tokenizer, _write(tmp_path / f"chats{suffix}", rows), **values) == expected


def _rows_of(tokenizer, path, **values) -> list:
    data = prepare_datasets(settings(sources=[{"path": str(path)}], **values), tokenizer)
    assert data.stats["sources"][path.stem]["rows_read"] == 3 and len(data.train) == 3
    return sorted((row["input_ids"], row["labels"]) for row in data.train)
