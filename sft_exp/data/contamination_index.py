"""The evaluation side of the contamination check: every text the run is evaluated on, as hashed n-grams.

A group is what the report counts by: one task of `evals` (its items: prompt turns and reference), the
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
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from sft_exp.data import ngrams
from sft_exp.data.formats import RAW_JSON_COLUMN

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
    table = pa.table({"texts": pa.array([[str(t) for t in item if t] for item in texts.items], pa.list_(pa.large_string()))})
    ids = np.asarray(texts.item_ids if texts.item_ids is not None else range(len(texts.items)), np.int64)
    key = hashlib.sha256(json.dumps([texts.items, ids.tolist()], default=str).encode()).hexdigest()
    piece = Piece(table, ["texts"], np.arange(len(texts.items), dtype=np.int64), texts.source, key, item_ids=ids)
    return EvalGroup(texts.name, texts.source, kind, [piece], tuple(texts.covers))


def row_batches(rows, columns: list, positions: np.ndarray):
    """(record batch, each of its rows' position) of the rows of `rows` (a datasets.Dataset or a pyarrow Table)
    at `positions` (sorted), a batch at a time. Never a whole column at once: Arrow's `take` over a chunked
    nested column concatenates every chunk first (a million raw rows: a gigabyte), so rows are taken batch by
    batch; a dataset's own cache files are read with plain reads (sft_exp.data.scan)."""
    from sft_exp.compat import row_indices
    from sft_exp.data.mapped_pages import release_arrow_pages_now_and_then
    from sft_exp.data.scan import record_batches

    stored, positions = ngrams.stored_columns(columns), np.asarray(positions, np.int64)
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
                    for at, part in ngrams.slices(batch):
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
        texts, seg_row = ngrams.text_segments(batch, piece.columns)
        words = ngrams.split_words(texts, seg_row)
        hashes, segment = ngrams.ngram_hashes(words, self.n)
        owner = items[words.seg_row[segment]]
        ngram_parts.append((hashes, np.full(len(hashes), g, np.int32), owner))
        if piece.whole:
            row_hashes, counts = ngrams.row_hashes(words, words.lower, batch.num_rows)
            has_text = counts > 0
            whole_parts.append((row_hashes[has_text], np.full(int(has_text.sum()), g, np.int32), items[has_text]))

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
        parts = [self.n, [(g.name, g.source, g.kind, [(p.content_key, p.columns, p.whole) for p in g.pieces])
                          for g in self.groups], [(x.name, x.reason) for x in self.not_checked]]
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
        row, columns = ngrams.json_row(row[RAW_JSON_COLUMN], columns[1:]), None
    values = row if columns is None else {column: row.get(column) for column in columns}
    return list(ngrams.string_leaves(values))


def dataset_piece(rows, columns: list, positions: np.ndarray, label: str, whole: bool) -> Piece:
    """Items that are rows of a datasets.Dataset (held-out rows, a file of `against`)."""
    from sft_exp.compat import dataset_fingerprint

    positions = np.unique(np.asarray(positions, np.int64))
    key = hashlib.sha256(dataset_fingerprint(rows).encode() + json.dumps(columns).encode() + positions.tobytes()).hexdigest()
    return Piece(rows, list(columns), positions, str(Path(label)) if label else "", key, whole)
