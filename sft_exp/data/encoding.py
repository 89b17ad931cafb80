"""Rows -> token ids and labels, a batch at a time (the function `Dataset.map` runs, in parallel).

Per batch: normalize each row to its internal form, render chat templates and find the trained
character spans, tokenize every text of the batch in one call to the Rust tokenizer, turn spans
into labels, append EOS where the format needs it, truncate. Bad rows raise `DataError` naming the
file and row, or (on_bad_row=drop) come out empty with their reason in `drop_reason`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pyarrow as pa

from sft_exp.data.formats import RAW_JSON_COLUMN, BadRow, PromptCompletion, Text, field_values, normalize_row
from sft_exp.data.masks import conversation_spans, labels_from_spans
from sft_exp.errors import DataError

NO_SUPERVISED_TOKENS = "no_supervised_tokens"


@dataclass
class EncodeSpec:
    """Everything one source's map needs; picklable, so `num_proc` workers get a copy."""

    tokenizer: object
    fmt: str
    columns: dict  # format field -> column name
    template: str | None
    template_variables: dict
    markers: bool
    assistant_only: bool
    completion_only: bool
    max_length: int | None  # None: no truncation (wrapped packing cuts rows itself)
    source_index: int
    source_file: str
    drop_bad_rows: bool


def _backend(tokenizer):
    """The Rust tokenizer, without truncation or padding a caller may have left on it."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()
    return backend


def _render_row(item, spec: EncodeSpec) -> tuple[str, list | None, bool]:
    """(text, trained character spans or None for all, whether to append EOS)."""
    if isinstance(item, Text):
        return item.text, None, True
    if isinstance(item, PromptCompletion):
        text = item.prompt + item.completion
        spans = [(len(item.prompt), len(text))] if spec.completion_only else None
        return text, spans, True
    if spec.template is None:
        raise DataError(
            f"{spec.source_file}: the rows are conversations but the tokenizer has no chat template; "
            "set data.chat_template (chatml, zephyr, or a .jinja file)"
        )
    text, spans = conversation_spans(
        item,
        spec.template,
        spec.template_variables,
        assistant_only=spec.assistant_only,
        completion_only=spec.completion_only,
        markers=spec.markers,
    )
    return text, spans, False


def _reject(spec: EncodeSpec, index: int, bad: BadRow) -> None:
    if not spec.drop_bad_rows:
        raise DataError(
            f"{spec.source_file}, row {index}: {bad.detail} [{bad.reason}]. Fix the row, or set "
            "data.on_bad_row=drop to drop such rows and count them."
        )


def _finish(ids: list[int], labels: list[int], append_eos: bool, eos_id: int | None, spec: EncodeSpec):
    if append_eos and (not ids or ids[-1] != eos_id):
        ids, labels = ids + [eos_id], labels + [eos_id]  # the EOS ends the text/completion: always trained
    truncated = spec.max_length is not None and len(ids) > spec.max_length
    if truncated:
        ids, labels = ids[: spec.max_length], labels[: spec.max_length]
    return ids, labels, truncated


def _tokenize(texts: list[str], add_special_tokens: bool, spec: EncodeSpec) -> list:
    if not texts:
        return []
    return _backend(spec.tokenizer).encode_batch(texts, add_special_tokens=add_special_tokens)


def _render_batch(columns: dict, n_rows: int, indices: list[int], spec: EncodeSpec) -> tuple[dict, list[str]]:
    """Rendered rows grouped by whether EOS is appended ({append_eos: [(row, text, spans)]}), and drop reasons."""
    reasons = [""] * n_rows
    rendered = {True: [], False: []}
    for row in range(n_rows):
        try:
            values = field_values({column: values[row] for column, values in columns.items()}, spec.columns)
            text, row_spans, add_eos = _render_row(normalize_row(spec.fmt, values), spec)
        except BadRow as bad:
            _reject(spec, indices[row], bad)
            reasons[row] = bad.reason
            continue
        rendered[add_eos].append((row, text, row_spans))
    return rendered, reasons


def _as_table(ids: list, labels: list, reasons: list[str], truncated: list[bool], source_index: int) -> pa.Table:
    """Arrow columns built from flat int32 arrays: far cheaper than letting datasets convert nested lists."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    total = int(offsets[-1])
    positions = np.arange(total, dtype=np.int32) - np.repeat(offsets[:-1], lengths)

    def tokens(flat) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))

    return pa.table({
        "input_ids": tokens(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total)),
        "labels": tokens(np.fromiter(chain.from_iterable(labels), dtype=np.int32, count=total)),
        "position_ids": tokens(positions),
        "source_ids": tokens(np.full(total, source_index, dtype=np.int32)),
        "drop_reason": pa.array(reasons, type=pa.string()),
        "truncated": pa.array(truncated, type=pa.bool_()),
    })  # fmt: skip


def encode_batch(batch, indices: list[int], spec: EncodeSpec) -> pa.Table:
    """One map batch (an Arrow table, or a dict of columns) -> an Arrow table of token columns."""
    present = batch.column_names if isinstance(batch, pa.Table) else list(batch)
    names = [RAW_JSON_COLUMN] if RAW_JSON_COLUMN in present else [c for c in spec.columns.values() if c in present]
    if isinstance(batch, pa.Table):
        columns = {name: batch.column(name).to_pylist() for name in names}
    else:
        columns = {name: batch[name] for name in names}
    n_rows = len(indices)
    rendered, reasons = _render_batch(columns, n_rows, indices, spec)
    ids_out, labels_out, truncated = [[]] * n_rows, [[]] * n_rows, [False] * n_rows
    # Conversations carry their special tokens in the rendered text; text and completions get BOS
    # (when the tokenizer adds one) like TRL, and EOS appended. One Rust call per kind per batch.
    for add_eos, items in rendered.items():
        encodings = _tokenize([text for _, text, _ in items], add_eos, spec)
        for (row, text, row_spans), encoding in zip(items, encodings):
            # Conversations: whitespace after an end-of-turn token is not trained (never generated).
            labels = labels_from_spans(encoding, row_spans, None if add_eos else text)
            ids, labels, truncated[row] = _finish(encoding.ids, labels, add_eos, spec.tokenizer.eos_token_id, spec)
            if labels.count(-100) == len(labels):
                reasons[row] = NO_SUPERVISED_TOKENS  # nothing to learn (e.g. truncation cut every answer)
                continue
            ids_out[row], labels_out[row] = ids, labels
    return _as_table(ids_out, labels_out, reasons, truncated, spec.source_index)
