"""Nested rows (self-instruct's seed tasks: `instances: [{input, output}]`): a `columns` path reads a
nested field, and `expand` makes one training row per instance."""

from __future__ import annotations

import json

import pytest

from sft_exp.data import DataSettings, prepare_datasets
from sft_exp.errors import DataError

SELF_INSTRUCT = [
    {
        "id": "seed_task_0",
        "name": "breakfast",
        "instruction": "Answer the question",
        "instances": [{"input": "What is two plus three", "output": "five"}],
        "is_classification": False,
    },
    {
        "id": "seed_task_1",
        "name": "capital",
        "instruction": "Answer the question",
        "instances": [
            {"input": "What is the capital of France", "output": "Paris"},
            {"input": "Hello", "output": "Hi"},
        ],
        "is_classification": False,
    },
]


def _prepare(word_tokenizer, tmp_path, **source):
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SELF_INSTRUCT))
    settings = DataSettings(
        sources=[{"path": str(path), "format": "alpaca", **source}],
        eval_split_size=0,
        seed=0,
        chat_template="chatml",
        assistant_only_loss=True,
    )
    return prepare_datasets(settings, word_tokenizer, cache_dir=str(tmp_path / "cache"))


def _answers(word_tokenizer, data):
    return sorted(
        word_tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        for row in data.train
    )


def test_a_column_path_reads_the_first_instance(word_tokenizer, tmp_path):
    data = _prepare(word_tokenizer, tmp_path, columns={"input": "instances.0.input", "output": "instances.0.output"})
    assert len(data.train) == 2
    answers = _answers(word_tokenizer, data)
    assert any("five" in a for a in answers) and any("Paris" in a for a in answers)
    assert not any("Hi" in a.split() for a in answers)


def test_expand_makes_one_row_per_instance(word_tokenizer, tmp_path):
    data = _prepare(
        word_tokenizer, tmp_path, expand="instances", columns={"input": "instances.input", "output": "instances.output"}
    )
    assert data.stats["rows_read"] == 3 and len(data.train) == 3
    assert any("Hi" in a.split() for a in _answers(word_tokenizer, data))


def test_expand_of_a_column_the_file_lacks_names_it(word_tokenizer, tmp_path):
    with pytest.raises(DataError, match="expand='instancez' is not a column"):
        _prepare(word_tokenizer, tmp_path, expand="instancez", columns={"output": "instances.0.output"})


def test_a_missing_field_is_named_in_the_columns_hint_with_the_nested_path_form():
    """self-instruct rows (instruction + instances[{input, output}]) read as alpaca: the hint names `output`,
    the field that is missing (not `instruction`, which the file has), and the path form that reaches it."""
    import pytest

    from sft_exp.data.formats import detect_format
    from sft_exp.errors import DataError

    with pytest.raises(DataError) as error:
        detect_format("alpaca", ["id", "name", "instruction", "instances", "is_classification"], {}, "seed_tasks.jsonl")
    message = str(error.value)
    assert "columns={output: <one of the file's columns>}" in message and "instances.0.output" in message
