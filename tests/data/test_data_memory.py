"""Data preparation in flat memory: the streamed per-row pass, released mapped pages, refusals."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sft_exp.data import DataSettings, packing, prepare_datasets
from sft_exp.data.cache import TokenDigest, record_batches, scan_encoded, token_digest
from sft_exp.data.packing import pack_bfd, pack_wrapped, token_table
from sft_exp.data.statistics import token_counts
from sft_exp.errors import ConfigError
from sft_exp.system import release_arrow_pages
from tests.data.builders import REPO_ROOT, conversation, settings, write_jsonl

N_ROWS = 2_345  # crosses the 1,000-row map batches and the 100-row batches written below


def _encoded_rows(batch: dict, indices: list[int]) -> dict:
    """Rows shaped like the tokenizer's output; every 7th row dropped (empty), every 5th truncated."""
    out = {"input_ids": [], "labels": [], "drop_reason": [], "truncated": [], "flaw": [], "trained_tokens": []}
    for index in indices:
        dropped = index % 7 == 3
        length = 0 if dropped else 1 + (index * 37) % 50
        ids = [(index + k) % 1000 for k in range(length)]
        labels = [-100 if k % 3 == 0 else token for k, token in enumerate(ids)]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["drop_reason"].append(("bad_json", "no_assistant_turn")[index % 2] if dropped else "")
        out["truncated"].append(index % 5 == 0 and not dropped)
        out["flaw"].append("answer_cut" if index % 10 == 0 and not dropped else "")  # half the truncated rows
        out["trained_tokens"].append(sum(label != -100 for label in labels[1:]))
    return out


@pytest.fixture
def encoded_on_disk(tmp_path) -> datasets.Dataset:
    raw = datasets.Dataset.from_dict({"row": list(range(N_ROWS))})
    return raw.map(_encoded_rows, batched=True, with_indices=True, remove_columns=["row"],
                   cache_file_name=str(tmp_path / "encoded.arrow"), writer_batch_size=100)  # fmt: skip


def _whole_table_figures(table: pa.Table):
    """What prepare.py computed before, from whole columns at once."""
    reasons = np.array(table.column("drop_reason").to_pylist(), dtype=object)
    kept = np.flatnonzero(reasons == "")
    dropped = Counter(reasons[reasons != ""].tolist())
    truncated = int(np.asarray(table.column("truncated")).sum())
    tokens = pc.list_value_length(table.column("input_ids")).to_numpy()[kept]
    trained = table.column("trained_tokens").to_numpy()[kept]
    return kept, dropped, truncated, tokens, trained


def test_streamed_scan_equals_the_whole_table_figures(encoded_on_disk):
    assert encoded_on_disk.cache_files  # read from its cache file, a written batch at a time
    assert len(list(record_batches(encoded_on_disk, ["input_ids"]))) == -(-N_ROWS // 100)
    scan = scan_encoded(encoded_on_disk)
    if sys.platform.startswith("linux"):  # no page of the tokenized rows is left resident by the scan
        assert _resident_bytes(encoded_on_disk.cache_files[0]["filename"]) == 0
    kept, dropped, truncated, tokens, trained = _whole_table_figures(encoded_on_disk.data.table)
    assert np.array_equal(scan.kept, kept) and np.array_equal(scan.row_tokens, tokens)
    assert np.array_equal(scan.row_trained, trained)
    assert scan.dropped == dropped and sum(dropped.values()) > 2 and scan.truncated == truncated > 0
    flawed = sum(1 for flaw in encoded_on_disk.data.table.column("flaw").to_pylist() if flaw)
    assert scan.flawed == {"answer_cut": flawed} and flawed > 0
    assert scan.digest == token_digest(encoded_on_disk.data.table, ("input_ids", "labels"))
    # The same rows in memory, in other chunks: the same figures and digest.
    rechunked = pa.Table.from_batches(encoded_on_disk.data.table.to_batches(max_chunksize=333))
    in_memory = scan_encoded(datasets.Dataset(rechunked))
    assert np.array_equal(in_memory.kept, kept) and in_memory.digest == scan.digest


def test_token_digest_sees_lengths_and_values_not_batching():
    table = pa.table({"ids": [[1, 2], [3], [4, 5, 6]]})
    whole = token_digest(table, ("ids",))
    pieces = TokenDigest(("ids",))
    for batch in table.to_batches(max_chunksize=1):
        pieces.update(batch)
    assert pieces.hexdigest() == whole
    assert token_digest(pa.table({"ids": [[1, 2, 3], [], [4, 5, 6]]}), ("ids",)) != whole  # same values, other rows
    assert token_digest(pa.table({"ids": [[1, 2], [3], [4, 5, 7]]}), ("ids",)) != whole


@pytest.mark.parametrize("packing", [False, True])
def test_prepared_counts_equal_a_count_of_every_training_token(word_tokenizer, tmp_path, packing):
    """The counts summed per row, or over packed rows a batch at a time, equal the tokens counted anew
    over the whole training table."""
    rows = [conversation(f"Hi {i}", "Hello there") if i % 9 else {"messages": []} for i in range(N_ROWS)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = prepare_datasets(settings(sources=[{"path": str(path), "weight": 1.5}], chat_template="chatml",
                                     assistant_only_loss=True, on_bad_row="drop", packing=packing,
                                     max_length=64), word_tokenizer)  # fmt: skip
    recount = token_counts(token_table(data.train), 1)
    assert data.stats["rows_dropped"] and data.stats["sources"]["rows"]["rows_kept"] == N_ROWS - N_ROWS // 9 - 1
    assert (data.stats["tokens"], data.stats["supervised_tokens"]) == (recount["tokens"], recount["supervised_tokens"])


@pytest.mark.parametrize("pack", [pack_bfd, pack_wrapped])
def test_packing_block_by_block_equals_packing_at_once(tmp_path, monkeypatch, pack):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=700)
    raw = datasets.Dataset.from_dict({"length": lengths})

    def examples(batch: dict, indices: list[int]) -> dict:
        ids = [[(i * 7 + k) % 500 for k in range(n)] for i, n in zip(indices, batch["length"])]
        return {"input_ids": ids, "labels": [[t if k % 2 else -100 for k, t in enumerate(row)] for row in ids],
                "position_ids": [list(range(len(row))) for row in ids], "source_ids": [[i % 2] * len(row) for i, row in zip(indices, ids)]}  # fmt: skip

    on_disk = raw.map(examples, batched=True, with_indices=True, remove_columns=["length"],
                      cache_file_name=str(tmp_path / "examples.arrow"), writer_batch_size=64)  # fmt: skip
    shuffled = on_disk.select(rng.permutation(len(on_disk)))  # an indices mapping over the cache file
    monkeypatch.setattr(packing, "BLOCK_TOKENS", 1 << 30)
    at_once = pack(datasets.Dataset.from_dict(shuffled[:]), 64)  # in memory, one block
    monkeypatch.setattr(packing, "BLOCK_TOKENS", 3 * 64)  # 3 packed rows a block; wrapped blocks cut examples
    by_block = pack(shuffled, 64)
    assert by_block.cache_files and len(by_block) == len(at_once) > 3 * 64 * 2 // 64
    assert by_block[:] == at_once[:]


def _resident_bytes(path: str) -> int:
    """Resident bytes of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) == 6 and head[5] == path
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps; madvise is Linux-only")
def test_released_arrow_pages_leave_rss_and_the_data_intact(tmp_path):
    values = np.arange(4_000_000, dtype=np.int64)  # 32 MB
    dataset = datasets.Dataset.from_dict({"x": np.zeros(1)}).map(
        lambda _: {"x": values}, batched=True, remove_columns=["x"], cache_file_name=str(tmp_path / "big.arrow")
    )
    path = dataset.cache_files[0]["filename"]
    column = dataset.data.table.column("x")
    assert int(pc.sum(column).as_py()) == int(values.sum())  # every page read through the map
    assert _resident_bytes(path) > 24 * 2**20
    release_arrow_pages()
    assert _resident_bytes(path) < 4 * 2**20
    assert int(pc.sum(column).as_py()) == int(values.sum())  # the mapping still reads the file


def test_streaming_sources_are_refused_naming_the_key(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [conversation("Hi", "Hello")])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.streaming=True: sources are not streamed.*max_samples"):
        DataSettings(sources=[{"path": str(path), "streaming": True}], seed=0)


def _bench_data():
    spec = importlib.util.spec_from_file_location("bench_data", REPO_ROOT / "benchmarks" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_refuses_a_speed_up_when_the_rows_differ():
    bench = _bench_data()
    bench.check_same_rows({"sft_exp": {10}, "trl": {10}}, {"sft_exp": {"ab"}, "trl": {"ab"}})  # same: no exit
    for supervised, rows, named in (
        ({"sft_exp": {10}, "trl": {10}}, {"sft_exp": {"ab"}, "trl": {"cd"}}, "rows (hash"),
        ({"sft_exp": {10}, "trl": {12}}, {"sft_exp": {"ab"}, "trl": {"ab"}}, "trained tokens: sft_exp [10], TRL [12]"),
        (
            {"sft_exp": {10}, "trl": {10}},
            {"sft_exp": {"ab", "cd"}, "trl": {"ab"}},
            "sft_exp's runs produced different rows",
        ),
    ):
        with pytest.raises(SystemExit) as stop:
            bench.check_same_rows(supervised, rows)
        assert "same rows: NO, so no speed-up is printed" in str(stop.value.code) and named in str(stop.value.code)
