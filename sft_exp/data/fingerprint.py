"""Hashes: the cache key of a source's tokenization, and the fingerprint of prepared data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CODE_FILES = ("formats.py", "tool_calls.py", "templates.py", "masks.py", "encoding.py", "message_loss.py", "turn_policy.py")


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
    return _sha(dataset_fingerprint, json.dumps(settings, sort_keys=True, default=str), tokenizer_digest, code_hash())[:32]


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
