"""Word n-grams of rows, hashed, a record batch at a time: the text side of the contamination check.

The method is s1's and open-r1's (`scripts/decontaminate.py`): a text is lower-cased and split on
whitespace (`text.lower().split()`), and its word n-grams are every run of n consecutive words. Here
the words of a whole record batch are split by Arrow, each distinct word is hashed once (Python's
hash of the word, as written and lower-cased), and an n-gram's hash combines its n word hashes, so a
million rows cost numpy passes, not a Python loop per row. Hashes are compared within one process only
(Python salts str hashes per process); a match is confirmed on the words themselves before it is reported.

A row's text is every string in the columns its format reads (all turns, prompts and answers, system
prompts, tool calls), each string a segment of its own: an n-gram never spans two turns.

The evaluation side (EvalIndex): A group is what the report counts by: one task of `evals` (its items: prompt turns and reference), the
run's held-out rows, an lm-eval task's documents, a file of `data.decontamination.against`. Its items
are rows of a table (in memory for a task, datasets' Arrow cache for held-out rows and files), read a
record batch at a time. What is kept: per n-gram of every item its hash, group and item, sorted by hash
(a set to test the training rows' n-grams against); for groups whose items are whole rows (held-out rows,
files read without a column) also each row's whole-text hash, so a short row equal to a training row is
found too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

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
    rows = _mix(
        _sums(segments * _powers(int(index.max(initial=0)) + 1)[index], row_start, per_row) + per_row.astype(np.uint64)
    )
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


HELD_OUT = "held-out rows"
_FILTER_BITS = 22


@dataclass
class EvalTexts:
    """A task's texts, given to prepare_datasets: `items[i]` is item i's texts (prompt turns, reference)."""

    name: str
    source: str  # where the items come from (a file, an lm-eval task and split)
    items: list  # list[list[str]]
    item_ids: Optional[list] = None  # how each item is numbered in the report (its row in `source`); default 0..
    covers: tuple = ()  # other names that are this group (the `heldout` task is the held-out rows)


@dataclass
class NotChecked:
    """An evaluation whose texts could not be read (an lm-eval task that needs the hub, your own evaluator)."""

    name: str
    reason: str


@dataclass
class Piece:
    """Items of a group read from one table: `rows` (a datasets.Dataset or pyarrow Table) at `positions`."""

    rows: object
    columns: list
    positions: np.ndarray  # int64: the rows that are items
    label: str  # the file, for "row 12 of <label>"
    content_key: str  # a stable digest of what the items are (for caches and the data fingerprint)
    whole: bool = False  # items are whole rows: also compared as a whole
    item_ids: Optional[np.ndarray] = None  # the number each row is given in the report; default: its position
    offset: int = 0  # the group's item number of its first item


@dataclass
class EvalGroup:
    name: str
    source: str
    kind: str  # task | held-out | file | lm-eval
    pieces: list = field(default_factory=list)
    covers: tuple = ()

    @property
    def items(self) -> int:
        return sum(len(piece.positions) for piece in self.pieces)


def text_group(texts: EvalTexts, kind: str = "task") -> EvalGroup:
    """A group held in memory: one row per item, its texts in a list column."""
    table = pa.table(
        {"texts": pa.array([[str(t) for t in item if t] for item in texts.items], pa.list_(pa.large_string()))}
    )
    ids = np.asarray(texts.item_ids if texts.item_ids is not None else range(len(texts.items)), np.int64)
    key = hashlib.sha256(json.dumps([texts.items, ids.tolist()], default=str).encode()).hexdigest()
    piece = Piece(table, ["texts"], np.arange(len(texts.items), dtype=np.int64), texts.source, key, item_ids=ids)
    return EvalGroup(texts.name, texts.source, kind, [piece], tuple(texts.covers))


def row_batches(rows, columns: list, positions: np.ndarray):
    """(record batch, each of its rows' position) of the rows of `rows` (a datasets.Dataset or a pyarrow Table)
    at `positions` (sorted), a batch at a time. Never a whole column at once: Arrow's `take` over a chunked
    nested column concatenates every chunk first (a million raw rows: a gigabyte), so rows are taken batch by
    batch; a dataset's own cache files are read with plain reads (sft_exp.data.cache)."""
    from sft_exp.compat import row_indices
    from sft_exp.data.cache import record_batches
    from sft_exp.system import release_arrow_pages_now_and_then

    stored, positions = stored_columns(columns), np.asarray(positions, np.int64)
    indices = None if isinstance(rows, pa.Table) else row_indices(rows)
    if not isinstance(rows, pa.Table) and indices is None:
        wanted, start = np.zeros(len(rows), bool), 0
        wanted[positions] = True
        for batch in record_batches(rows, stored):
            span, start = np.arange(start, start + batch.num_rows, dtype=np.int64), start + batch.num_rows
            keep = wanted[span]
            if keep.any():
                yield (batch if keep.all() else batch.filter(pa.array(keep))), span[keep]
        return
    table = rows.select(stored) if isinstance(rows, pa.Table) else rows.data.table.select(stored)
    at = positions if indices is None else indices.take(pa.array(positions)).to_numpy().astype(np.int64)
    order = np.argsort(at, kind="stable")
    at, positions, start = at[order], positions[order], 0
    for batch in table.to_batches():
        low, high = np.searchsorted(at, [start, start + batch.num_rows])
        if high > low:
            yield batch.take(pa.array(at[low:high] - start)), positions[low:high]
        start += batch.num_rows
        release_arrow_pages_now_and_then()  # the mapped pages the takes touched


class EvalIndex:
    """Hashed n-grams (and whole-row hashes) of every group's items: which group and item each came from."""

    def __init__(self, n: int, groups: Sequence[EvalGroup], not_checked: Sequence[NotChecked] = ()):
        self.n, self.groups, self.not_checked = n, list(groups), list(not_checked)
        ngram_parts, whole_parts = [], []
        for g, group in enumerate(self.groups):
            offset = 0
            for piece in group.pieces:
                piece.offset = offset
                for batch, positions in row_batches(piece.rows, piece.columns, piece.positions):
                    items = offset + np.searchsorted(piece.positions, positions)  # item number within the group
                    for at, part in slices(batch):
                        self._add(part, piece, g, items[at : at + part.num_rows], ngram_parts, whole_parts)
                offset += len(piece.positions)
        self.ngrams = _sorted_entries(ngram_parts)
        self.whole = _sorted_entries(whole_parts)
        # A first look by the top bits of a hash: most training n-grams are in no eval text, and one array
        # lookup tells most of them apart before the binary search (4 MB).
        self._seen = {whole: np.zeros(1 << _FILTER_BITS, bool) for whole in (False, True)}
        for whole, keys in ((False, self.ngrams[0]), (True, self.whole[0])):
            self._seen[whole][keys >> np.uint64(64 - _FILTER_BITS)] = True

    def _add(self, batch, piece: Piece, g: int, items: np.ndarray, ngram_parts: list, whole_parts: list) -> None:
        texts, seg_row = text_segments(batch, piece.columns)
        words = split_words(texts, seg_row)
        hashes, segment = ngram_hashes(words, self.n)
        owner = items[words.seg_row[segment]]
        ngram_parts.append((hashes, np.full(len(hashes), g, np.int32), owner))
        if piece.whole:
            whole_hashes, counts = row_hashes(words, words.lower, batch.num_rows)
            has_text = counts > 0
            whole_parts.append((whole_hashes[has_text], np.full(int(has_text.sum()), g, np.int32), items[has_text]))

    def owners(self, hashes: np.ndarray, whole: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each entry matching one of `hashes`: (index into `hashes`, group, item)."""
        keys, groups, items = self.whole if whole else self.ngrams
        left = np.searchsorted(keys, hashes, "left")
        count = np.searchsorted(keys, hashes, "right") - left
        which = np.repeat(np.arange(len(hashes)), count)
        at = np.repeat(left - np.concatenate([[0], np.cumsum(count)[:-1]]), count) + np.arange(int(count.sum()))
        return which, groups[at], items[at]

    def contains(self, hashes: np.ndarray, whole: bool = False) -> np.ndarray:
        keys = (self.whole if whole else self.ngrams)[0]
        found = np.zeros(len(hashes), bool)
        maybe = np.flatnonzero(self._seen[whole][hashes >> np.uint64(64 - _FILTER_BITS)])
        if len(keys) and len(maybe):
            at = np.minimum(np.searchsorted(keys, hashes[maybe]), len(keys) - 1)
            found[maybe] = keys[at] == hashes[maybe]
        return found

    def item_leaves(self, g: int, item: int) -> list[tuple[str, str]]:
        """(path, text) of every text of one item: to confirm a match on the words and quote it."""
        piece = self._piece(g, item)
        return row_leaves(piece.rows, int(piece.positions[item - piece.offset]), piece.columns)

    def item_label(self, g: int, item: int) -> tuple[int, str]:
        """(the item's number in its file, "row N of <file>")."""
        piece = self._piece(g, item)
        position = int(piece.positions[item - piece.offset])
        number = int(piece.item_ids[position]) if piece.item_ids is not None else position
        return number, f"row {number} of {piece.label}"

    def _piece(self, g: int, item: int) -> Piece:
        return next(p for p in reversed(self.groups[g].pieces) if p.offset <= item)

    def digest(self) -> str:
        """What the eval side is, stable across processes and machines (the hashes above are not)."""
        parts = [
            self.n,
            [(g.name, g.source, g.kind, [(p.content_key, p.columns, p.whole) for p in g.pieces]) for g in self.groups],
            [(x.name, x.reason) for x in self.not_checked],
        ]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _sorted_entries(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    keys, groups, items = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(keys, kind="stable")
    return keys[order], groups[order], items[order]


def row_leaves(rows, position: int, columns: list) -> list[tuple[str, str]]:
    """(path, text) of every string in one row's `columns`, e.g. ("messages[2].content", "...")."""
    row = rows.slice(position, 1).to_pylist()[0] if isinstance(rows, pa.Table) else rows[position]
    if columns and columns[0] == RAW_JSON_COLUMN:
        row, columns = json_row(row[RAW_JSON_COLUMN], columns[1:]), None
    values = row if columns is None else {column: row.get(column) for column in columns}
    return list(string_leaves(values))


def dataset_piece(rows, columns: list, positions: np.ndarray, label: str, whole: bool) -> Piece:
    """Items that are rows of a datasets.Dataset (held-out rows, a file of `against`)."""
    from sft_exp.compat import dataset_fingerprint

    positions = np.unique(np.asarray(positions, np.int64))
    key = hashlib.sha256(
        dataset_fingerprint(rows).encode() + json.dumps(columns).encode() + positions.tobytes()
    ).hexdigest()
    return Piece(rows, list(columns), positions, str(Path(label)) if label else "", key, whole)
