"""Word n-grams of rows, hashed, a record batch at a time: the text side of the contamination check.

The method is s1's and open-r1's (`scripts/decontaminate.py`): a text is lower-cased and split on
whitespace (`text.lower().split()`), and its word n-grams are every run of n consecutive words. Here
the words of a whole record batch are split by Arrow, each distinct word is hashed once (Python's
hash of the word, as written and lower-cased), and an n-gram's hash combines its n word hashes, so a
million rows cost numpy passes, not a Python loop per row. Hashes are compared within one process only
(Python salts str hashes per process); a match is confirmed on the words themselves before it is reported.

A row's text is every string in the columns its format reads (all turns, prompts and answers, system
prompts, tool calls), each string a segment of its own: an n-gram never spans two turns.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_exp.data.formats import RAW_JSON_COLUMN

_PRIME = np.uint64(0x100000001B3)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads the bits of combined hashes (uint64, wraps)."""
    values = values ^ (values >> np.uint64(30))
    values = values * _MIX[0]
    values = values ^ (values >> np.uint64(27))
    values = values * _MIX[1]
    return values ^ (values >> np.uint64(31))


def _leaves(array: pa.Array, rows: np.ndarray) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Every string under `array` (through lists and structs) with the row it belongs to."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        array, kind = array.dictionary_decode(), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield array, rows
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        values, parents = pc.list_flatten(array), pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        yield from _leaves(values, rows[parents])
    elif pa.types.is_struct(kind):
        for child in array.flatten():
            yield from _leaves(child, rows)


def _json_leaves(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_leaves(item)


def json_row(raw: str | None, keys: list[str]) -> dict:
    """A row kept as a JSON string (Arrow could not type the file as one table): its `keys` (all if none)."""
    row = json.loads(raw) if raw else {}
    row = row if isinstance(row, dict) else {}
    return {key: value for key, value in row.items() if not keys or key in keys}


# Rows hashed at a time: a cache file's record batch can hold tens of thousands of rows, and the hashing keeps
# about 100 bytes a word alive per slice (a 2,048-row slice of 100-word rows: ~20 MB).
SLICE_ROWS = 2048


def slices(batch: pa.RecordBatch, rows: int = SLICE_ROWS) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(offset, the batch's rows offset..offset+rows), zero-copy."""
    for start in range(0, batch.num_rows, rows):
        yield start, batch.slice(start, rows)


def stored_columns(columns: list[str]) -> list[str]:
    """The table columns that hold `columns` (rows kept as JSON strings: that one column)."""
    return columns[:1] if columns and columns[0] == RAW_JSON_COLUMN else columns


def text_segments(batch: pa.RecordBatch, columns: list[str]) -> tuple[pa.Array, np.ndarray]:
    """(the strings of each row's `columns`, each one's row in the batch), ordered by row.

    `columns` starting with RAW_JSON_COLUMN: rows kept as JSON strings, read for the keys that follow."""
    pieces, rows = [], []
    if columns and columns[0] == RAW_JSON_COLUMN:
        for row, raw in enumerate(batch.column(RAW_JSON_COLUMN).to_pylist()):
            texts = list(_json_leaves(json_row(raw, columns[1:])))
            pieces.append(pa.array(texts, pa.large_string()))
            rows.append(np.full(len(texts), row, np.int64))
    else:
        for name in columns:
            for leaf, leaf_rows in _leaves(batch.column(name), np.arange(batch.num_rows)):
                pieces.append(leaf.cast(pa.large_string()))
                rows.append(leaf_rows)
    if not pieces:
        return pa.array([], pa.large_string()), np.zeros(0, np.int64)
    row_of = np.concatenate(rows)
    order = np.argsort(row_of, kind="stable")  # a row's segments together, in column then turn order
    return pa.concat_arrays(pieces).take(pa.array(order)), row_of[order]


@dataclass
class Words:
    """The words of some text segments: per word its hash lower-cased (for n-grams) and as written (for
    exact duplicates); per segment its first word, its word count and its row."""

    lower: np.ndarray  # uint64
    exact: np.ndarray  # uint64
    seg_start: np.ndarray  # int64
    seg_length: np.ndarray  # int64
    seg_row: np.ndarray  # int64


def split_words(texts: pa.Array, seg_row: np.ndarray) -> Words:
    """`texts` split on whitespace (Python's str.split() rule) and hashed, one hash per distinct word."""
    split = pc.utf8_split_whitespace(texts)
    flat = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy(zero_copy_only=False)
    nonempty = pc.greater(pc.binary_length(flat), 0)  # Arrow keeps "" around leading/trailing whitespace
    flat, parents = flat.filter(nonempty), parents[nonempty.to_numpy(zero_copy_only=False)]
    seg_length = np.bincount(parents, minlength=len(texts)).astype(np.int64)
    seg_start = np.cumsum(seg_length) - seg_length
    encoded = pc.dictionary_encode(flat)
    distinct = encoded.dictionary.to_pylist()
    lower = np.fromiter((hash(word.lower()) for word in distinct), np.int64, len(distinct)).view(np.uint64)
    exact = np.fromiter((hash(word) for word in distinct), np.int64, len(distinct)).view(np.uint64)
    index = encoded.indices.to_numpy(zero_copy_only=False)
    return Words(lower[index], exact[index], seg_start, seg_length, np.asarray(seg_row, np.int64))


def ngram_hashes(words: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every n-gram within one segment, its segment), in order."""
    total = len(words.lower)
    count = total - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    combined = words.lower[:count].copy()
    for k in range(1, n):
        combined *= _PRIME
        combined += words.lower[k : k + count]
    segment = np.repeat(np.arange(len(words.seg_length)), words.seg_length)
    inside = np.flatnonzero(segment[:count] == segment[n - 1 :])  # the window ends in the segment it starts in
    return _mix(combined[inside]), segment[inside]


def _sums(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum (mod 2**64) of each run values[start:start + length]."""
    running = np.concatenate([[np.uint64(0)], np.cumsum(values, dtype=np.uint64)])
    return running[starts + lengths] - running[starts]


_POWERS = np.ones(1, np.uint64)


def _powers(count: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < count:
        _POWERS = np.cumprod(np.full(max(count, 2 * len(_POWERS)), _PRIME, np.uint64), dtype=np.uint64)
        _POWERS = np.concatenate([[np.uint64(1)], _POWERS])
    return _POWERS[:count]


def row_hashes(words: Words, word_hashes: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash of each row's whole text: its segments in order, each its words in order; its word count).

    `word_hashes`: words.lower (equal up to case and whitespace) or words.exact (up to whitespace)."""
    at = np.arange(len(word_hashes), dtype=np.int64) - np.repeat(words.seg_start, words.seg_length)
    positioned = word_hashes * _powers(int(at.max(initial=0)) + 1)[at]
    segments = _mix(_sums(positioned, words.seg_start, words.seg_length) + words.seg_length.astype(np.uint64))
    per_row = np.bincount(words.seg_row, minlength=n_rows).astype(np.int64)
    row_start = np.cumsum(per_row) - per_row
    index = np.arange(len(segments), dtype=np.int64) - np.repeat(row_start, per_row)
    rows = _mix(_sums(segments * _powers(int(index.max(initial=0)) + 1)[index], row_start, per_row) + per_row.astype(np.uint64))
    word_count = np.bincount(words.seg_row, weights=words.seg_length, minlength=n_rows).astype(np.int64)
    return rows, word_count


def normalized_words(text: str) -> list[str]:
    """open-r1's normalize_string + split: the words the hashes above stand for."""
    return text.lower().split()


def word_ngrams(text: str, n: int) -> list[str]:
    """open-r1's word_ngrams over the normalized text: every n consecutive words, joined by one space."""
    words = normalized_words(text)
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def string_leaves(value, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) of every string in a row's value, e.g. ("messages[2].content", "..."): to say which turn."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from string_leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from string_leaves(item, f"{path}[{i}]")
