"""Rows -> token ids and labels, a batch at a time (the function `Dataset.map` runs, in parallel).

Per batch, in chunks: normalize each row to its internal form, render chat templates and find the
trained character spans (Python), tokenize the chunk in one call to the Rust tokenizer, turn spans
into trained token ranges, append EOS where the format needs it, truncate. The tokenizer runs on a
worker thread (it releases the GIL), so chunk k+1 renders while chunk k tokenizes. Labels are built
for the whole batch at once from the ranges, in numpy. Bad rows raise `DataError` naming the file
and row, or (on_bad_row=drop) come out empty with their reason in `drop_reason`.
"""

from __future__ import annotations

import copy
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data.formats import (
    RAW_JSON_COLUMN,
    Conversation,
    PromptCompletion,
    Text,
    field_values,
    normalize_row,
    top_column,
    with_system_prompt,
)
from sft_exp.data.masks import conversation_spans, trained_token_ranges
from sft_exp.data.turns import DEFAULT_POLICY, LossPolicy, dropped_reasoning_turns, has_reasoning, turn_example
from sft_exp.errors import BadRow, DataError
from sft_exp.system import release_arrow_pages_now_and_then

NO_SUPERVISED_TOKENS = "no_supervised_tokens"
# Rows rendered per tokenizer call: small enough that rendering overlaps tokenizing, large enough
# that the Rust tokenizer spreads a call over its threads.
CHUNK_ROWS = 256


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
    policy: LossPolicy = DEFAULT_POLICY  # which turns teach, and how much (turns.py)
    # Turns whose reasoning the template drops in the whole conversation get an example of their own (turns.py).
    split_reasoning_turns: bool = True
    # data.system_prompt: put first in every conversation that has no system message.
    system_prompt: str | None = None


def _backend(tokenizer):
    """The Rust tokenizer, without truncation or padding a caller may have left on it."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()
    return backend


def _render_row(item, spec: EncodeSpec) -> list[tuple[str, list | None, bool, int]]:
    """The row's examples: (text, trained character spans or None for all, whether to append EOS, split turn).
    Split turn: 0 for a row that is one example; 1..M for the M per-turn examples of a split row."""
    if isinstance(item, Text):
        return [(item.text, None, True, 0)]
    if isinstance(item, PromptCompletion):
        text = item.prompt + item.completion
        spans = [(len(item.prompt), len(text), 1.0)] if spec.completion_only else None
        return [(text, spans, True, 0)]
    if spec.template is None:
        raise DataError(
            f"{spec.source_file}: the rows are conversations but the tokenizer has no chat template; "
            "set data.chat_template (chatml, zephyr, or a .jinja file)"
        )
    text, spans = _conversation(item, spec.policy, spec)
    if not (spec.split_reasoning_turns and spec.assistant_only and has_reasoning(item)):
        return [(text, spans, False, 0)]
    turns = dropped_reasoning_turns(
        item, text, spec.template, spec.template_variables, spec.policy, spec.completion_only
    )
    if not turns:
        return [(text, spans, False, 0)]
    examples = [_conversation(*turn_example(item, index, spec.policy), spec=spec) for index in turns]
    if spans:  # the whole conversation still trains the turns it renders as at inference (the last one, ...)
        examples.append((text, spans))
    return [(text, spans, False, k) for k, (text, spans) in enumerate(examples, 1)]


def _conversation(item, policy: LossPolicy, spec: EncodeSpec) -> tuple[str, list | None]:
    return conversation_spans(
        item, spec.template, spec.template_variables, assistant_only=spec.assistant_only,
        completion_only=spec.completion_only, markers=spec.markers, policy=policy,
    )  # fmt: skip


def _reject(spec: EncodeSpec, index: int, bad: BadRow) -> None:
    if not spec.drop_bad_rows:
        # A template_mismatch names its own fix (another template); dropping would lose good rows.
        fix = (
            ""
            if bad.reason == "template_mismatch"
            else (" Fix the row, or set data.on_bad_row=drop to drop such rows and count them.")
        )
        raise DataError(f"{spec.source_file}, row {index}: {bad.detail} [{bad.reason}].{fix}")


class Rendered(NamedTuple):
    """One example of a row (a split row has several), or a bad row (`reason` set, nothing to tokenize)."""

    row: int  # position in the map batch
    text: str
    spans: list | None  # trained character spans (start, end, weight); None: all
    append_eos: bool  # text and completions: True (they also get the tokenizer's BOS); conversations: False
    flaw: str = ""  # see FLAWS below: counted and warned, the row still trains
    split_turn: int = 0  # 1..M: the row's M per-turn examples (turns.py); 0: the row is one example
    reason: str = ""  # a bad row's reason: it comes out empty with it as its drop_reason


# FLAWS: rows that train but are likely mistakes: counted per source and warned, never silently trained.
ANSWER_CUT = "answer_cut"  # truncation cut trained tokens: an answer or its end of turn
NO_USER_TURN = "no_user_turn"  # a conversation whose assistant answers no user message


def row_flaw(item) -> str:
    """A flaw seen before tokenizing: a conversation with assistant turns but no user turn."""
    if not isinstance(item, Conversation):
        return ""
    roles = {m.get("role") for m in item.messages if isinstance(m, dict)}
    return NO_USER_TURN if "assistant" in roles and "user" not in roles else ""


def _render_rows(columns: dict, rows: range, indices: list[int], spec: EncodeSpec) -> list[Rendered]:
    rendered = []
    for row in rows:
        try:
            values = field_values({column: values[row] for column, values in columns.items()}, spec.columns)
            item = with_system_prompt(normalize_row(spec.fmt, values), spec.system_prompt)
            examples = _render_row(item, spec)
        except BadRow as bad:
            _reject(spec, indices[row], bad)
            rendered.append(Rendered(row, "", None, False, reason=bad.reason))
            continue
        flaw = row_flaw(item)
        rendered += [Rendered(row, text, spans, eos, flaw, turn) for text, spans, eos, turn in examples]
    return rendered


def _tokenize(rendered: list[Rendered], backend) -> list:
    """Encodings in the order of `rendered` (None for bad rows): one Rust call per kind (with / without special tokens)."""
    encodings = [None] * len(rendered)
    for append_eos in (False, True):
        positions = [i for i, item in enumerate(rendered) if item.append_eos == append_eos and not item.reason]
        if positions:
            texts = [rendered[i].text for i in positions]
            for i, encoding in zip(positions, backend.encode_batch(texts, add_special_tokens=append_eos)):
                encodings[i] = encoding
    return encodings


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _tokenizer_thread() -> ThreadPoolExecutor:
    """One worker thread per process (a pool made before a fork has no thread in the child)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="sft_exp-tokenize"))
    return _pool[1]


class _Rows:
    """A batch's examples, filled chunk by chunk in row order (a bad row: one empty example with its
    reason; a split row: several): token ids back to back in one int32 buffer, each example's length
    (0: dropped), and the trained ranges as absolute token positions."""

    def __init__(self, spec: EncodeSpec):
        self.flat_ids = array("i")  # extended from each row's id list at C speed
        self.rows: list[int] = []  # per example: its row's position in the map batch
        self.split_turn: list[int] = []
        self.reasons: list[str] = []
        self.lengths: list[int] = []
        self.truncated: list[bool] = []
        # A kept row's flaw, counted and warned (FLAWS): "" when none.
        self.flaw: list[str] = []
        self.trained: list[int] = []  # trained tokens a row predicts (its first token is never predicted)
        self.range_starts: list[int] = []
        self.range_stops: list[int] = []
        self.range_weights: list[float] = []
        self.spec = spec
        self.eos_id = spec.tokenizer.eos_token_id  # a property lookup: once per batch, not per row

    def add(self, rendered: list[Rendered], encodings: list) -> None:
        limit = self.spec.max_length
        for item, encoding in zip(rendered, encodings):
            at = len(self.lengths)  # this example's position in the batch's output
            self.rows.append(item.row)
            self.split_turn.append(item.split_turn)
            self.reasons.append(item.reason)
            self.lengths.append(0)
            self.truncated.append(False)
            self.flaw.append(item.flaw)
            self.trained.append(0)
            if item.reason:
                continue
            # Conversations: whitespace after an end-of-turn token is not trained (never generated).
            ranges = trained_token_ranges(encoding, item.spans, None if item.append_eos else item.text)
            ids = encoding.ids
            if item.append_eos and (not ids or ids[-1] != self.eos_id):
                ranges.append((len(ids), len(ids) + 1, 1.0))  # the EOS ends the text/completion: always trained
                ids.append(self.eos_id)
            if limit is not None and len(ids) > limit:
                self.truncated[at] = True
                if any(stop > limit for _, stop, _ in ranges):
                    self.flaw[at] = ANSWER_CUT
                ids = ids[:limit]
                ranges = [(first, min(stop, limit), w) for first, stop, w in ranges if first < limit]
            if not ranges:
                self.reasons[at] = NO_SUPERVISED_TOKENS  # nothing to learn (e.g. truncation cut every answer)
                continue
            offset = len(self.flat_ids)
            self.flat_ids.extend(ids)
            self.lengths[at] = len(ids)
            self.trained[at] = sum(stop - first for first, stop, _ in ranges) - (ranges[0][0] == 0)
            for first, stop, weight in ranges:
                self.range_starts.append(offset + first)
                self.range_stops.append(offset + stop)
                self.range_weights.append(weight)


def _as_table(rows: _Rows, source_index: int, indices: list[int]) -> pa.Table:
    """Arrow columns built from flat int32 arrays: far cheaper than letting datasets convert nested lists."""
    input_ids = np.frombuffer(rows.flat_ids, dtype=np.int32) if rows.flat_ids else np.zeros(0, np.int32)
    total = len(input_ids)
    lengths = np.asarray(rows.lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    positions = (np.arange(total) - np.repeat(offsets[:-1], lengths)).astype(np.int32)
    # Trained ranges -> a token mask: +1 where a range starts, -1 where it stops, running sum > 0.
    starts, stops = (np.asarray(positions_, dtype=np.int64) for positions_ in (rows.range_starts, rows.range_stops))
    edges = np.bincount(starts, minlength=total + 1) - np.bincount(stops, minlength=total + 1)
    trained = np.cumsum(edges[:-1]) > 0
    # The same running sum of each range's weight: a trained token's loss weight (0 where untrained).
    weights = np.asarray(rows.range_weights, dtype=np.float64)
    weight_edges = np.bincount(starts, weights, minlength=total + 1) - np.bincount(stops, weights, minlength=total + 1)
    loss_weights = np.where(trained, np.cumsum(weight_edges[:-1]), 0.0).astype(np.float32)
    list_offsets = pa.array(offsets.astype(np.int32))
    row_ids = (
        np.asarray(indices, dtype=np.int64)[np.asarray(rows.rows, dtype=np.int64)]
        if rows.rows
        else np.zeros(0, np.int64)
    )

    def tokens(flat: np.ndarray, kind=None) -> pa.ListArray:
        return pa.ListArray.from_arrays(list_offsets, pa.array(flat, type=kind or pa.int32()))

    return pa.table({
        "input_ids": tokens(input_ids),
        "labels": tokens(np.where(trained, input_ids, np.int32(IGNORE_INDEX))),
        "position_ids": tokens(positions),
        "source_ids": tokens(np.full(total, source_index, dtype=np.int32)),
        "loss_weights": tokens(loss_weights, pa.float32()),
        # The source row each token comes from (its row in the file): examples.parquet names examples by it.
        "example_ids": tokens(np.repeat(row_ids.astype(np.int32), lengths)),
        # Per example: its row in the file (a split row's examples share it) and its place among them.
        "row_id": pa.array(row_ids, type=pa.int64()),
        "split_turn": pa.array(rows.split_turn, type=pa.int32()),
        "drop_reason": pa.array(rows.reasons, type=pa.string()),
        "truncated": pa.array(rows.truncated, type=pa.bool_()),
        "flaw": pa.array(rows.flaw, type=pa.string()),
        "trained_tokens": pa.array(rows.trained, type=pa.int32()),
    })  # fmt: skip


def encode_batch(batch, indices: list[int], spec: EncodeSpec) -> pa.Table:
    """One map batch (an Arrow table, or a dict of columns) -> an Arrow table of token columns."""
    present = batch.column_names if isinstance(batch, pa.Table) else list(batch)
    names = (
        [RAW_JSON_COLUMN]
        if RAW_JSON_COLUMN in present
        else list(
            dict.fromkeys(
                top_column(c, present)
                for c in spec.columns.values()
                if isinstance(c, str) and top_column(c, present) in present
            )
        )
    )
    if isinstance(batch, pa.Table):
        columns = {name: batch.column(name).to_pylist() for name in names}
    else:
        columns = {name: batch[name] for name in names}
    # The batch is copied out of the raw rows' memory map: let its pages go, or RSS grows with the rows.
    release_arrow_pages_now_and_then()
    n_rows = len(indices)
    rows = _Rows(spec)
    backend = _backend(spec.tokenizer)  # once per batch: it may copy the tokenizer
    pending = None  # (rendered chunk, its encodings being computed on the tokenizer thread)
    for start in range(0, n_rows, CHUNK_ROWS):
        rendered = _render_rows(columns, range(start, min(start + CHUNK_ROWS, n_rows)), indices, spec)
        future = _tokenizer_thread().submit(_tokenize, rendered, backend)
        if pending is not None:
            rows.add(pending[0], pending[1].result())
        pending = (rendered, future)
    if pending is not None:
        rows.add(pending[0], pending[1].result())
    return _as_table(rows, spec.source_index, indices)
