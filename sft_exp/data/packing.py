"""Packing tokenized rows into rows of at most `max_length` tokens, vectorized over Arrow columns.

- `bfd`: best-fit decreasing over the whole dataset: longest example first, each into the fullest
  row that still has room. Examples are never split.
- `wrapped`: examples concatenated in order and cut every `max_length` tokens; a cut example
  continues in the next row with positions from 0 (it cannot see its first part anyway).
In both, position_ids restart at 0 at every example start, and the label there is -100.
"""
from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sft_exp.compat import row_indices
from sft_exp.constants import IGNORE_INDEX

TOKEN_COLUMNS = ("input_ids", "labels", "position_ids", "source_ids")


def token_table(dataset: datasets.Dataset) -> pa.Table:
    """The token columns as one single-chunk Arrow table, in the dataset's row order.

    A shuffled dataset is an indices mapping over its table; datasets' own `[:]` turns it into one
    chunk per row, which every later numpy step then has to concatenate. One `take` gathers it whole.
    """
    table = dataset.data.table.select(list(TOKEN_COLUMNS))
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


def _column_tokens(table: pa.Table, name: str, order: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The tokens of column `name` for examples `order` (with `lengths` tokens each), back to back."""
    column = table.column(name).combine_chunks()
    starts = column.offsets.to_numpy()[order]  # offsets index `.values` (absolute, even when sliced)
    piece_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    token_index = np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - piece_start
    return column.values.to_numpy()[token_index]


def _gather(table: pa.Table, order: np.ndarray, row_lengths: np.ndarray, cuts: np.ndarray) -> pa.Table:
    """Rows of `row_lengths` tokens holding the tokens of examples `order` back to back.

    `cuts`: token positions (in the concatenation) where an example or a piece of one starts; the
    positions restart there and the label there is -100.
    """
    all_lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    lengths = all_lengths[order]
    n_tokens = int(lengths.sum())
    restart = np.zeros(n_tokens, dtype=bool)
    restart[cuts] = True
    steps = np.arange(n_tokens)
    positions = steps - np.maximum.accumulate(np.where(restart, steps, 0))
    row_offsets = pa.array(np.concatenate([[0], np.cumsum(row_lengths)]).astype(np.int32))
    columns = {"position_ids": pa.ListArray.from_arrays(row_offsets, pa.array(positions))}
    for name in ("input_ids", "labels", "source_ids"):
        values = _column_tokens(table, name, order, lengths)
        if name == "labels":
            values = np.where(restart, IGNORE_INDEX, values)
        columns[name] = pa.ListArray.from_arrays(row_offsets, pa.array(values))
    return pa.table({name: columns[name] for name in TOKEN_COLUMNS})


def pack_bfd(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    table = token_table(dataset)
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    bins = bfd_bins(lengths, max_length)
    order = np.array([index for members in bins for index in members], dtype=np.int64)
    row_lengths = np.array([lengths[members].sum() for members in bins], dtype=np.int64)
    example_lengths = lengths[order]
    cuts = np.cumsum(example_lengths) - example_lengths
    return datasets.Dataset(_gather(table, order, row_lengths, cuts))


def pack_wrapped(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    table = token_table(dataset)
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    total = int(lengths.sum())
    row_lengths = np.full(total // max_length, max_length, dtype=np.int64)
    if total % max_length:
        row_lengths = np.append(row_lengths, total % max_length)
    example_starts = np.cumsum(lengths) - lengths
    row_starts = np.arange(0, total, max_length)
    cuts = np.union1d(example_starts, row_starts)
    return datasets.Dataset(_gather(table, np.arange(len(lengths)), row_lengths, cuts))
