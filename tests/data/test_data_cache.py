"""Prepared data is cached under a fingerprint of the source, the settings, the tokenizer and the code:
a second preparation tokenizes nothing, and a changed tokenizer or changed code tokenizes again."""

from __future__ import annotations

import shutil

import pytest

import sft_exp.data.cache as fingerprint
import sft_exp.data.prepare as prepare
from sft_exp.data import prepare_datasets
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl


@pytest.fixture
def tokenize_calls(monkeypatch) -> list:
    """Counts the batches the tokenizing step really encodes (a cache hit encodes none)."""
    calls = []
    real = prepare.encode_batch

    def counting(batch, indices, spec):
        calls.append(len(indices))
        return real(batch, indices, spec)

    monkeypatch.setattr(prepare, "encode_batch", counting)
    return calls


@pytest.fixture
def source(tmp_path):
    rows = [
        conversation("Hi", "Bye"),
        conversation("What is two plus three", "five"),
        conversation("Hello", "Hi there"),
    ]
    return write_jsonl(tmp_path / "chats.jsonl", rows)


def _prepare(source, tokenizer, cache_dir):
    data = prepare_datasets(
        settings(sources=[{"path": str(source)}], chat_template="chatml", assistant_only_loss=True),
        tokenizer,
        cache_dir=str(cache_dir),
    )
    return [(row["input_ids"], row["labels"]) for row in data.train]


def test_a_second_preparation_loads_from_the_cache(source, tmp_path, tokenize_calls):
    first = _prepare(source, make_word_tokenizer(), tmp_path / "cache")
    assert sum(tokenize_calls) == 3
    assert list((tmp_path / "cache").rglob("cache-*.arrow"))  # the tokenized rows are on disk
    tokenize_calls.clear()
    assert _prepare(source, make_word_tokenizer(), tmp_path / "cache") == first
    assert tokenize_calls == []  # nothing tokenized again


def test_a_different_tokenizer_is_tokenized_again(source, tmp_path, tokenize_calls):
    _prepare(source, make_word_tokenizer(), tmp_path / "cache")
    tokenize_calls.clear()
    other = make_word_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<|new|>"]})  # a tokenizer that is not the same
    _prepare(source, other, tmp_path / "cache")
    assert sum(tokenize_calls) == 3


def test_changed_tokenizing_code_is_tokenized_again(source, tmp_path, tokenize_calls, monkeypatch):
    code = tmp_path / "code"  # a copy of sft_exp/data to edit, so that the real files stay as they are
    shutil.copytree(fingerprint.__file__.rsplit("/", 1)[0], code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "__file__", str(code / "cache.py"))
    _prepare(source, make_word_tokenizer(), tmp_path / "cache")
    tokenize_calls.clear()
    _prepare(source, make_word_tokenizer(), tmp_path / "cache")
    assert tokenize_calls == []  # unchanged code: the cache
    with open(code / "masks.py", "a") as masks:
        masks.write("\n# a change to how masks are made\n")
    _prepare(source, make_word_tokenizer(), tmp_path / "cache")
    assert sum(tokenize_calls) == 3
