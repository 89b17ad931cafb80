"""Hashes: the cache key of a source's tokenization, and the fingerprint of prepared data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

_CODE_FILES = ("formats.py", "templates.py", "masks.py", "encoding.py")


def _sha(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def code_hash() -> str:
    """Changes whenever the code that turns rows into tokens changes, so stale caches are not reused."""
    here = Path(__file__).parent
    return _sha(*((here / name).read_bytes() for name in _CODE_FILES))


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(type(tokenizer).__name__, vocab, json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))


def encode_fingerprint(dataset_fingerprint: str, settings: dict, tokenizer_digest: str) -> str:
    """The datasets cache key of one source's tokenized rows (datasets wants <= 64 hex chars)."""
    return _sha(dataset_fingerprint, json.dumps(settings, sort_keys=True, default=str), tokenizer_digest, code_hash())[:32]


def data_fingerprint(table: pa.Table, extra: dict) -> str:
    """Stable hash of the prepared training rows: same data and settings -> same value on any machine."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        lengths = np.diff(column.offsets.to_numpy())
        digest.update(name.encode())
        digest.update(lengths.astype(np.int64).tobytes())
        start, end = column.offsets[0].as_py(), column.offsets[-1].as_py() if len(column) else 0
        digest.update(column.values.to_numpy()[start:end].astype(np.int64).tobytes())
    return digest.hexdigest()[:16]
