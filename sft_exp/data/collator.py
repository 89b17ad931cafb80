"""Batches of prepared rows -> tensors: padded, or padding-free (no pad tokens between examples).

Which layout costs nothing depends on the attention implementation (`collator_for` chooses):
- flash_attention_2/3 and sdpa_varlen (what sft_exp loads for sdpa) read the example boundaries
  from position_ids of ONE concatenated row: padding-free as one row does no work for padding and
  none across examples. This is the default there.
- plain sdpa/eager/flex build a mask from position_ids: one concatenated row makes attention
  quadratic in the whole batch's tokens (a (T, T) mask for T = every token of the batch), so there
  the padded layout is the default, and packed rows stay separate rows (`separate_rows`).
"""

from __future__ import annotations

import logging

import torch

from sft_exp.constants import IGNORE_INDEX, SEPARATING_ATTENTION, VARLEN_ATTENTION
from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)


class SFTCollator:
    """Collates rows with input_ids, labels, position_ids and source_ids (lists of ints), and
    loss_weights (floats, per token: 0 where untrained) and example_ids (each token's source row) when
    the rows have them.

    Padded mode: right padding, labels -100 and source_ids -1 on pads, attention_mask 0 on pads.
    Padding-free mode: no attention_mask; position_ids restart at 0 for each example, which is how
    transformers (sdpa, eager, flex, flash-attention) keeps examples from attending to each other.
    The rows are concatenated into one (1, total) row, or with `separate_rows` (for rows that are
    already packed) kept as rows, each padded at its end by one more "example" that trains nothing.
    The first label of every example is -100, so the last token of one example is never trained to
    predict the next example.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        separate_rows: bool = False,
    ):
        if pad_token_id is None:
            raise ValueError("SFTCollator needs a pad_token_id (set the tokenizer's pad token, or use its EOS)")
        if separate_rows and not padding_free:
            raise ValueError("SFTCollator(separate_rows=True) is a padding-free layout: pass padding_free=True too")
        self.pad_token_id = pad_token_id
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of
        self.separate_rows = separate_rows

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if not multiple else -(-length // multiple) * multiple

    def width(self, rows: list[dict]) -> int:
        """The length of the batch's rows: its longest row (or, one row padding-free, all its tokens), rounded up."""
        lengths = [len(row["input_ids"]) for row in rows]
        return self._padded_length(sum(lengths) if self.padding_free and not self.separate_rows else max(lengths))

    def __call__(self, rows: list[dict], width: int | None = None) -> dict[str, torch.Tensor]:
        """The batch of `rows`, padded to `width` (at least `self.width(rows)`, which is the default)."""
        width = self.width(rows) if width is None else width
        if not self.padding_free:
            return self._padded(rows, width)
        if self.separate_rows:
            parts = [self._padding_free([row], width) for row in rows]
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        return self._padding_free(rows, width)

    def _padded(self, rows: list[dict], width: int) -> dict[str, torch.Tensor]:
        fills = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "position_ids": 0, "source_ids": -1}
        fills.update({key: fill for key, fill in OPTIONAL_COLUMNS.items() if key in rows[0]})
        batch = {key: torch.full((len(rows), width), fill, dtype=_dtype(key)) for key, fill in fills.items()}
        batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            for key in fills:
                batch[key][i, :length] = torch.as_tensor(row[key], dtype=_dtype(key))
            batch["attention_mask"][i, :length] = 1
        return batch

    def _padding_free(self, rows: list[dict], width: int) -> dict[str, torch.Tensor]:
        """The rows back to back in one (1, width) row; positions past their tokens are one padding example."""
        keys = (
            "input_ids",
            "labels",
            "position_ids",
            "source_ids",
            *(key for key in OPTIONAL_COLUMNS if key in rows[0]),
        )
        columns = {key: [] for key in keys}
        for row in rows:
            for key, values in columns.items():
                values.extend(row[key])
        batch = {key: torch.tensor(values, dtype=_dtype(key)) for key, values in columns.items()}
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
        pad = width - len(columns["input_ids"])
        if pad:  # the padding is one more "example": positions from 0, nothing trained
            tail = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "source_ids": -1, **OPTIONAL_COLUMNS}
            for key, fill in tail.items():
                if key in batch:
                    batch[key] = torch.cat([batch[key], torch.full((pad,), fill, dtype=_dtype(key))])
            batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(pad, dtype=torch.long)])
        return {key: value.unsqueeze(0) for key, value in batch.items()}


# Token columns prepared rows have and hand-made ones may not, with their fill on padding.
OPTIONAL_COLUMNS = {"loss_weights": 0.0, "example_ids": -1}


def _dtype(key: str) -> torch.dtype:
    return torch.float32 if key == "loss_weights" else torch.long


def default_padding_free(attn_implementation: str | None) -> bool:
    """Padding-free batches by default only where they cost nothing: attention per example (varlen)."""
    return attn_implementation in VARLEN_ATTENTION


def collator_for(
    pad_token_id: int,
    *,
    packing: bool,
    padding_free: bool | None,
    attn_implementation: str | None,
    pad_to_multiple_of: int | None = None,
) -> SFTCollator:
    """The collator a run trains with: `data.packing`, `data.padding_free` (None: the default for the attention).

    Packed rows are always padding-free (a padded packed row would let examples see each other);
    under a varlen kernel they go as one row, under any other attention as separate rows.
    """
    if padding_free is None:
        padding_free = default_padding_free(attn_implementation)
    if (
        (packing or padding_free)
        and attn_implementation is not None
        and attn_implementation not in SEPARATING_ATTENTION
    ):
        key = "data.packing" if packing else "data.padding_free"
        raise ConfigError(
            f"{key}=true with model.attn_implementation={attn_implementation}: that attention cannot keep examples "
            f"apart by position_ids; use one of {', '.join(SEPARATING_ATTENTION)} or set {key}=false"
        )
    one_row = attn_implementation in VARLEN_ATTENTION
    if packing or padding_free:
        log.info(
            "batches: %s, %s (attention: %s)",
            "packed rows" if packing else "padding-free",
            "one row per batch" if one_row else "each row masked from its position_ids",
            attn_implementation,
        )
    else:
        log.info("batches: padded to the longest row of each batch (attention: %s)", attn_implementation)
    if packing:
        return SFTCollator(
            pad_token_id, padding_free=True, pad_to_multiple_of=pad_to_multiple_of, separate_rows=not one_row
        )
    return SFTCollator(pad_token_id, padding_free=padding_free, pad_to_multiple_of=pad_to_multiple_of)


# Per-token columns whose value at position t+1 is what position t is trained on, with their fill where
# nothing is (the last position, padding). `shift_<key>` holds them moved one position left.
TARGET_COLUMNS = {"labels": IGNORE_INDEX, "loss_weights": 0.0, "source_ids": -1, "example_ids": -1}


def shift_targets(batch: dict) -> dict:
    """`shift_<key>` for each target column: position t's label (never across an example start, where the
    position id is 0), loss weight, source and source row, each the length of the batch's rows.

    Shifting before a sequence-parallel split keeps each shard's last position predicting the next shard's
    first token; `sft_forward` shifts a batch without them itself.
    """
    labels = batch["labels"]
    position_ids = batch.get("position_ids")
    if position_ids is not None:  # a position id of 0 starts a sequence: nothing before it may predict it
        labels = labels.masked_fill(position_ids == 0, IGNORE_INDEX)
    shifted = {}
    for key, fill in TARGET_COLUMNS.items():
        column = labels if key == "labels" else batch.get(key)
        if column is not None:
            shifted[f"shift_{key}"] = torch.cat([column[:, 1:], column.new_full((column.shape[0], 1), fill)], dim=1)
    return shifted
