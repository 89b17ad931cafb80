"""The prepared data's cache: its keys (hashes of a source's tokenization, the fingerprint of prepared
data) and one pass over a source's tokenized rows, a record batch at a time.

The tokenized rows live in datasets' Arrow cache files, memory-mapped. Reading a whole column
through the mapping (`to_numpy`, `to_pylist`) makes every page of it resident, so the process's
RSS grows with the data (about 4 KB a row at 270 tokens). Those pages are clean and reclaimable,
but they count in RSS and crowd the page cache; here each cache file is read with plain reads
instead, one record batch at a time, so peak memory stays flat whatever the number of rows. What
is kept per row is a few numbers in numpy arrays (the kept rows' raw index, tokens, trained tokens).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_exp.compat import row_indices
from sft_exp.system import release_arrow_pages

_CODE_FILES = ("formats.py", "templates.py", "masks.py", "turns.py", "encoding.py")


def _sha(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def code_hash(files: tuple[str, ...] = _CODE_FILES) -> str:
    """Changes whenever the code that turns rows into tokens changes, so stale caches are not reused."""
    here = Path(__file__).parent
    return _sha(*((here / name).read_bytes() for name in files))


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(type(tokenizer).__name__, vocab, json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))


def encode_fingerprint(dataset_fingerprint: str, settings: dict, tokenizer_digest: str) -> str:
    """The datasets cache key of one source's tokenized rows (datasets wants <= 64 hex chars)."""
    return _sha(dataset_fingerprint, json.dumps(settings, sort_keys=True, default=str), tokenizer_digest, code_hash())[
        :32
    ]


class TokenDigest:
    """Hash of list<int> columns fed a record batch at a time: per column, every row's length and its
    values; the same however the rows are split into batches or chunks."""

    def __init__(self, columns: tuple[str, ...]):
        self.columns = columns
        self.lengths = {name: hashlib.sha256() for name in columns}
        self.values = {name: hashlib.sha256() for name in columns}

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        for name in self.columns:
            column = batch.column(name)
            for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
                if len(chunk):
                    self.lengths[name].update(pc.list_value_length(chunk).to_numpy().astype(np.int64))
                    self.values[name].update(pc.list_flatten(chunk).to_numpy().astype(np.int32, copy=False))

    def hexdigest(self) -> str:
        parts = [(name, self.lengths[name].hexdigest(), self.values[name].hexdigest()) for name in self.columns]
        return _sha(*(part for column in parts for part in column))


def token_digest(table: pa.Table, columns: tuple[str, ...]) -> str:
    """`TokenDigest` of a whole table."""
    digest = TokenDigest(columns)
    digest.update(table)
    return digest.hexdigest()


def data_fingerprint(source_digests: list[str], selections: list[np.ndarray], settings: dict) -> str:
    """Stable hash of the prepared training data: same data and settings -> same value on any machine.

    The training rows are the sources' encoded rows (`source_digests`), picked and ordered by
    `selections` (rows per source, then the shuffle), then packed as `settings` say.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(_sha(*source_digests, code_hash(("packing.py",))).encode())
    for indices in selections:
        digest.update(np.asarray(indices, dtype=np.int64))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# Rows per batch when the rows are an in-memory table (cache files keep the batches they were written in).
BATCH_ROWS = 4096


@dataclass
class EncodedScan:
    kept: np.ndarray  # int64: raw row index of each kept example (a split row's examples share it)
    row_tokens: np.ndarray  # int32: per kept row, its tokens
    row_trained: np.ndarray  # int32: per kept row, its trained tokens (sums of them are int64)
    dropped: Counter  # drop reason -> rows
    truncated: int  # rows cut to max_length
    digest: str  # content hash of the kept rows' tokens and labels, in order
    flawed: Counter = None  # kept rows with a flaw (sft_exp.data.encoding: answer_cut, no_user_turn) -> rows
    positions: np.ndarray = None  # int64: each kept example's position in the tokenized rows
    rows_split: int = 0  # rows split into per-turn examples (sft_exp.data.turns)
    split_examples: int = 0  # the kept examples they made


def record_batches(dataset: datasets.Dataset, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The dataset's rows in order, one record batch at a time (only `columns`).

    A dataset made by `map` (no row selection) is its cache files back to back; those are read
    with plain file reads, so no page of them stays resident. Otherwise (rows in memory, or a
    selection of rows) the table's own batches are read.
    """
    files = [entry["filename"] for entry in dataset.cache_files]
    if files and row_indices(dataset) is None and _files_hold(dataset, files):
        for filename in files:
            with pa.OSFile(filename) as stream:
                for batch in pa.ipc.open_stream(stream):
                    yield batch.select(columns)
        return
    table = dataset.data.table.select(columns)
    indices = row_indices(dataset)
    if indices is None:
        yield from table.to_batches(max_chunksize=BATCH_ROWS)
        return
    for start in range(0, len(indices), BATCH_ROWS):  # a selection: gathered a batch of rows at a time
        yield from table.take(indices.slice(start, BATCH_ROWS)).combine_chunks().to_batches()


def _files_hold(dataset: datasets.Dataset, files: list[str]) -> bool:
    """Whether the cache files hold exactly the dataset's rows (their schemas are read, not their data)."""
    rows = 0
    for filename in files:
        with pa.memory_map(filename) as mapped:  # zero-copy batches: only their headers are touched
            rows += sum(batch.num_rows for batch in pa.ipc.open_stream(mapped))
    return rows == len(dataset.data)


def scan_encoded(dataset: datasets.Dataset) -> EncodedScan:
    """Kept rows, their token counts, drop reasons and the digest of a tokenized source, in one streaming pass."""
    digest = TokenDigest(("input_ids", "labels"))
    kept, positions, tokens, trained = [], [], [], []
    rows_split = split_examples = 0
    dropped: Counter = Counter()
    truncated, start, flawed = 0, 0, Counter()
    columns = ["input_ids", "labels", "drop_reason", "truncated", "flaw", "trained_tokens"]
    has_ids = "row_id" in dataset.column_names  # tokenized rows made by hand may lack them: one example per row
    columns += ["row_id", "split_turn"] if has_ids else []
    release_arrow_pages()  # map has just opened its output, reading each batch's header through the map
    for batch in record_batches(dataset, columns):
        reasons = batch.column("drop_reason")
        keep = pc.equal(reasons, "").to_numpy(zero_copy_only=False)
        for item in pc.value_counts(reasons.filter(pc.invert(pc.equal(reasons, "")))).to_pylist():
            dropped[item["values"]] += item["counts"]
        truncated += pc.sum(batch.column("truncated")).as_py() or 0
        flaws = batch.column("flaw").filter(pa.array(keep))  # kept rows only
        for item in pc.value_counts(flaws.filter(pc.invert(pc.equal(flaws, "")))).to_pylist():
            flawed[item["values"]] += item["counts"]
        at = start + np.flatnonzero(keep)
        positions.append(at)
        kept.append(batch.column("row_id").to_numpy(zero_copy_only=False)[keep] if has_ids else at)
        if has_ids:
            turns = batch.column("split_turn").to_numpy(zero_copy_only=False)[keep]
            rows_split += int((turns == 1).sum())
            split_examples += int((turns > 0).sum())
        tokens.append(pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False)[keep])
        trained.append(batch.column("trained_tokens").to_numpy(zero_copy_only=False)[keep])
        digest.update(batch)  # dropped rows are empty: hashing every row hashes the kept ones (and their lengths)
        start += batch.num_rows
    if start != len(dataset):
        raise RuntimeError(f"read {start} tokenized rows, expected {len(dataset)}")  # a bug, not bad data
    # Opening a cache file (`_files_hold`, datasets' own from_file) reads every batch's header through
    # the map, and the kernel maps the pages around each: ~64 KB a 1,000-row batch, otherwise resident.
    release_arrow_pages()

    def joined(pieces: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)

    return EncodedScan(joined(kept, np.int64), joined(tokens, np.int32), joined(trained, np.int32), dropped,
                       int(truncated), digest.hexdigest(), flawed, joined(positions, np.int64), rows_split,
                       split_examples)  # fmt: skip
