"""Mixtures by weight, eval split, determinism and the data fingerprint."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sft_exp.data import prepare_datasets
from sft_exp.data.splits import split_counts, weighted_rows
from tests.data.builders import conversation, settings, write_jsonl


def _sources(tmp_path, sizes: dict[str, int]) -> list[dict]:
    sources = []
    for name, size in sizes.items():
        rows = [conversation(f"{name} {' '.join(str(i))}", " ".join(["cat"] * (1 + i % 7))) for i in range(size)]
        sources.append({"path": str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), "name": name})
    return sources


def _prepare(tokenizer, sources, **values):
    return prepare_datasets(
        settings(sources=sources, chat_template="chatml", assistant_only_loss=True, **values), tokenizer
    )


def _first_source_counts(data) -> Counter:
    return Counter(data.source_names[ids[0]] for ids in data.train["source_ids"])


def test_weights_set_how_often_each_source_is_seen(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 200, "b": 200, "c": 100})
    sources[0]["weight"], sources[1]["weight"], sources[2]["weight"] = 0.5, 2.5, 1.0
    data = _prepare(word_tokenizer, sources)
    assert _first_source_counts(data) == {"a": 100, "b": 500, "c": 100}
    assert data.stats["train_examples_per_source"] == {"a": 100, "b": 500, "c": 100}
    assert data.source_names == ["a", "b", "c"]


def test_oversampling_repeats_every_row_then_samples_the_fraction():
    rows = weighted_rows(np.arange(10), 2.3, np.random.default_rng(0))
    counts = Counter(rows.tolist())
    assert len(rows) == 23 and all(counts[i] in (2, 3) for i in range(10)) and sum(c == 3 for c in counts.values()) == 3


def test_mixture_proportions_hold_within_packed_rows(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 300, "b": 300})
    sources[1]["weight"] = 3.0
    data = _prepare(word_tokenizer, sources, packing=True, max_length=64)
    per_source = data.stats["tokens_per_source"]
    assert 2.5 < per_source["b"] / per_source["a"] < 3.5  # same length distribution in both sources


def test_eval_split_holds_out_rows_never_trained_on(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 100, "b": 50})
    data = _prepare(word_tokenizer, sources, eval_split_size=0.1)
    assert len(data.eval) == 15 and len(data.train) == 135
    assert not {tuple(ids) for ids in data.eval["input_ids"]} & {tuple(ids) for ids in data.train["input_ids"]}
    assert len(data.heldout_examples) == 15 and data.heldout_examples[0]["prompt"][0]["role"] == "user"


def test_eval_split_size_as_a_count_is_shared_in_proportion():
    assert split_counts([100, 50], 30) == [20, 10]
    assert split_counts([3, 3, 3], 2) == [1, 1, 0]
    assert split_counts([10, 10], 0) == [0, 0]


def test_two_runs_give_identical_data_and_fingerprint(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 120, "b": 80})
    sources[0]["weight"] = 1.7
    first = _prepare(word_tokenizer, sources, eval_split_size=0.1, packing=True, max_length=48)
    second = _prepare(word_tokenizer, sources, eval_split_size=0.1, packing=True, max_length=48)
    assert first.train["input_ids"] == second.train["input_ids"]
    assert first.eval["input_ids"] == second.eval["input_ids"]
    assert first.fingerprint == second.fingerprint and first.stats == second.stats


def test_seed_and_data_changes_change_the_fingerprint(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 50})
    base = _prepare(word_tokenizer, sources, seed=1)
    assert _prepare(word_tokenizer, sources, seed=2).fingerprint != base.fingerprint
    write_jsonl(tmp_path / "a.jsonl", [conversation("changed", "cat")] * 50)
    assert _prepare(word_tokenizer, sources, seed=1).fingerprint != base.fingerprint


@pytest.mark.parametrize("num_proc", [2])
def test_parallel_tokenization_gives_the_same_rows(word_tokenizer, tmp_path, num_proc):
    sources = _sources(tmp_path, {"a": 1500})
    serial = _prepare(word_tokenizer, sources)
    parallel = _prepare(word_tokenizer, sources, num_proc=num_proc)
    assert serial.train["labels"] == parallel.train["labels"] and serial.fingerprint == parallel.fingerprint


def test_wrapped_packing_keeps_held_out_rows_within_max_length(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 40})
    data = _prepare(
        word_tokenizer, sources, eval_split_size=0.25, packing=True, packing_strategy="wrapped", max_length=16
    )
    assert len(data.eval) == 10 and max(len(ids) for ids in data.eval["input_ids"]) <= 16
    assert all(len(ids) == 16 for ids in data.train["input_ids"][:-1])


def test_unpacked_statistics_count_exactly_the_training_rows(word_tokenizer, tmp_path):
    sources = _sources(tmp_path, {"a": 60, "b": 40})
    sources[0]["weight"] = 1.5
    data = _prepare(word_tokenizer, sources, eval_split_size=0.1, max_length=12)  # some rows truncated
    tokens, trained = Counter(), Counter()
    for ids, labels, source_ids in zip(data.train["input_ids"], data.train["labels"], data.train["source_ids"]):
        name = data.source_names[source_ids[0]]
        tokens[name] += len(ids)
        trained[name] += sum(label != -100 for label in labels[1:])  # the first token is never predicted
    assert data.stats["rows_truncated"] > 0
    assert data.stats["tokens_per_source"] == dict(tokens) and data.stats["tokens"] == sum(tokens.values())
    assert data.stats["supervised_tokens_per_source"] == dict(trained)
    assert data.stats["supervised_tokens"] == sum(trained.values())


def test_the_examples_of_one_source_row_are_held_out_together():
    """Per-turn reasoning examples of one conversation never straddle the train/eval split (a held-out
    conversation with a prefix in training would be a leak); one example per row draws as before."""
    import numpy as np

    from sft_exp.data.splits import split_by_source_row, split_rows

    kept = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    for seed in range(20):
        train, held = split_by_source_row(kept, 2, np.random.default_rng(seed))
        assert sorted([*train, *held]) == list(range(len(kept)))
        assert len(set(kept[held])) == 2 and not set(kept[held]) & set(kept[train])
    plain = np.arange(7)
    for a, b in zip(
        split_by_source_row(plain, 3, np.random.default_rng(1)), split_rows(7, 3, np.random.default_rng(1))
    ):
        assert a.tolist() == b.tolist()
