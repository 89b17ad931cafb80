"""Packing tokenized rows into rows of at most `max_length` tokens, vectorized over Arrow columns.

- `bfd`: best-fit decreasing over the whole dataset: longest example first, each into the fullest
  row that still has room. Examples are never split.
- `wrapped`: examples concatenated in order and cut every `max_length` tokens; a cut example
  continues in the next row with positions from 0 (it cannot see its first part anyway).
In both, position_ids restart at 0 at every example start, and the label there is -100.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_exp.compat import dataset_fingerprint, row_indices
from sft_exp.constants import IGNORE_INDEX
from sft_exp.system import release_arrow_pages

TOKEN_COLUMNS = ("input_ids", "labels", "position_ids", "source_ids", "loss_weights", "example_ids")


def token_columns(table) -> list[str]:
    """The token columns a table has (loss_weights, example_ids: prepared rows have them, hand-made ones may not)."""
    return [name for name in TOKEN_COLUMNS if name in table.column_names]


# Tokens gathered per block of packed rows: bounds the memory packing needs whatever the rows.
BLOCK_TOKENS = 1 << 19


def token_table(dataset: datasets.Dataset) -> pa.Table:
    """The token columns as one single-chunk Arrow table, in the dataset's row order.

    A shuffled dataset is an indices mapping over its table; datasets' own `[:]` turns it into one
    chunk per row, which every later numpy step then has to concatenate. One `take` gathers it whole.
    """
    table = dataset.data.table.select(token_columns(dataset.data.table))
    indices = row_indices(dataset)  # None unless rows were selected or shuffled
    if indices is not None:
        return table.take(indices)
    return table.combine_chunks()


def bfd_bins(lengths: np.ndarray, max_length: int) -> list[list[int]]:
    """Best-fit decreasing: lists of example indices, each list fitting in `max_length`."""
    bins: list[list[int]] = []
    # Open bins grouped by free space; `has_space` is a bitset over free-space values, so the smallest
    # free space >= length is one shift and one lowest-set-bit away.
    by_space: dict[int, list[int]] = {}
    has_space = 0
    for index in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[index])
        candidates = has_space >> length
        if candidates:
            space = length + (candidates & -candidates).bit_length() - 1
            stack = by_space[space]
            bin_id = stack.pop()
            if not stack:
                has_space &= ~(1 << space)
        else:
            space, bin_id = max_length, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        left = space - length
        if left > 0:
            by_space.setdefault(left, []).append(bin_id)
            has_space |= 1 << left
    return bins


def _example_lengths(dataset: datasets.Dataset) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(token columns, the table row of each dataset row, each row's tokens), reading only list offsets."""
    table = dataset.data.table.select(token_columns(dataset.data.table))
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    indices = row_indices(dataset)  # None unless rows were selected or shuffled
    rows = np.arange(len(table)) if indices is None else indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return table, rows, lengths[rows].astype(np.int64)


def _gather(piece: pa.Table, skip: int, row_lengths: np.ndarray, cuts: np.ndarray) -> pa.RecordBatch:
    """Rows of `row_lengths` tokens: the tokens of `piece`'s rows back to back, from token `skip` on.

    `cuts`: token positions (from `skip`) where an example or a piece of one starts; the positions
    restart there and the label there is -100.
    """
    n_tokens = int(row_lengths.sum())
    restart = np.zeros(n_tokens, dtype=bool)
    restart[cuts] = True
    steps = np.arange(n_tokens)
    positions = steps - np.maximum.accumulate(np.where(restart, steps, 0))
    row_offsets = pa.array(np.concatenate([[0], np.cumsum(row_lengths)]).astype(np.int32))
    columns = {"position_ids": pa.ListArray.from_arrays(row_offsets, pa.array(positions))}
    for name in token_columns(piece):
        if name == "position_ids":
            continue
        values = piece.column(name).combine_chunks().flatten().to_numpy()[skip : skip + n_tokens]
        if name == "labels":
            values = np.where(restart, IGNORE_INDEX, values)
        columns[name] = pa.ListArray.from_arrays(row_offsets, pa.array(values))
    names = token_columns(piece)
    return pa.RecordBatch.from_arrays([columns[name] for name in names], names=names)


def _packed_batches(dataset, order, row_lengths, cuts, max_length) -> Iterator[pa.RecordBatch]:
    """The packed rows, a block of about BLOCK_TOKENS tokens at a time: only one block's tokens in memory.

    `order`: dataset rows back to back; `row_lengths`: tokens per packed row; `cuts`: token positions
    (in the whole concatenation) where positions restart. Every packed row starts at a cut.
    """
    table, rows, lengths = _example_lengths(dataset)
    example_lengths = lengths[order]
    example_starts = np.cumsum(example_lengths) - example_lengths
    row_starts = np.concatenate([[0], np.cumsum(row_lengths)])
    rows_per_block = max(1, BLOCK_TOKENS // max(max_length, 1))
    for first in range(0, len(row_lengths), rows_per_block):
        last = min(first + rows_per_block, len(row_lengths))
        t0, t1 = int(row_starts[first]), int(row_starts[last])
        e0 = int(np.searchsorted(example_starts, t0, side="right")) - 1
        e1 = int(np.searchsorted(example_starts, t1, side="left"))
        piece = table.take(pa.array(rows[order[e0:e1]]))
        block_cuts = cuts[np.searchsorted(cuts, t0) : np.searchsorted(cuts, t1)] - t0
        yield _gather(piece, t0 - int(example_starts[e0]), row_lengths[first:last], block_cuts)
        release_arrow_pages()  # the block's rows were read through the map, scattered: let those pages go


def _as_dataset(dataset: datasets.Dataset, batches: Iterator[pa.RecordBatch], strategy: str, max_length: int):
    """The packed rows written to an Arrow file beside the dataset's cache (memory-mapped back), or,
    for a dataset held in memory, kept in memory."""
    if not dataset.cache_files:
        return datasets.Dataset(pa.Table.from_batches(list(batches)))
    key = hashlib.sha256(f"{dataset_fingerprint(dataset)}-{strategy}-{max_length}".encode()).hexdigest()[:24]
    target = Path(dataset.cache_files[0]["filename"]).parent / f"packed-{key}.arrow"
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # ranks may pack at once: same rows
    writer = None
    with pa.OSFile(str(partial), "wb") as sink:
        for batch in batches:
            writer = writer or pa.ipc.new_stream(sink, batch.schema)
            writer.write_batch(batch)
        if writer is not None:
            writer.close()
    if writer is None:  # no rows to pack
        partial.unlink()
        return datasets.Dataset.from_dict({name: [] for name in TOKEN_COLUMNS})
    os.replace(partial, target)
    return datasets.Dataset.from_file(str(target))


def pack_bfd(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    _, _, lengths = _example_lengths(dataset)
    bins = bfd_bins(lengths, max_length)
    order = np.array([index for members in bins for index in members], dtype=np.int64)
    row_lengths = np.array([lengths[members].sum() for members in bins], dtype=np.int64)
    example_lengths = lengths[order]
    cuts = np.cumsum(example_lengths) - example_lengths
    return _as_dataset(dataset, _packed_batches(dataset, order, row_lengths, cuts, max_length), "bfd", max_length)


def pack_wrapped(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    _, _, lengths = _example_lengths(dataset)
    total = int(lengths.sum())
    row_lengths = np.full(total // max_length, max_length, dtype=np.int64)
    if total % max_length:
        row_lengths = np.append(row_lengths, total % max_length)
    example_starts = np.cumsum(lengths) - lengths
    row_starts = np.arange(0, total, max_length)
    cuts = np.union1d(example_starts, row_starts)
    order = np.arange(len(lengths))
    return _as_dataset(dataset, _packed_batches(dataset, order, row_lengths, cuts, max_length), "wrapped", max_length)
