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


def token_digest(table: pa.Table, columns: tuple[str, ...]) -> str:
    """Hash of list<int> columns: every row's length, then the values; the same however the table is chunked."""
    digest = hashlib.sha256()
    for name in columns:
        chunks = [chunk for chunk in table.column(name).chunks if len(chunk)]
        digest.update(name.encode())
        for chunk in chunks:
            digest.update(np.diff(chunk.offsets.to_numpy()).astype(np.int64))
        for chunk in chunks:
            start, end = chunk.offsets[0].as_py(), chunk.offsets[-1].as_py()
            digest.update(chunk.values.to_numpy()[start:end].astype(np.int32, copy=False))  # hashlib reads the buffer
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
