"""Batches of prepared rows -> tensors: padded, or padding-free (one concatenated row) for packing."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


class SFTCollator:
    """Collates rows with input_ids, labels, position_ids and source_ids (lists of ints).

    Padded mode: right padding, labels -100 and source_ids -1 on pads, attention_mask 0 on pads.
    Padding-free mode: the rows are concatenated into one (1, total) row without attention_mask;
    position_ids restart at 0 for each example, which is how transformers (sdpa, eager, flex,
    flash-attention) keeps examples from attending to each other. The first label of every example
    is -100, so the last token of one example is never trained to predict the next example.
    """

    def __init__(self, pad_token_id: int, padding_free: bool = False, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("SFTCollator needs a pad_token_id (set the tokenizer's pad token, or use its EOS)")
        self.pad_token_id = pad_token_id
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if not multiple else -(-length // multiple) * multiple

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return self._padding_free(rows) if self.padding_free else self._padded(rows)

    def _padded(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = self._padded_length(max(len(row["input_ids"]) for row in rows))
        fills = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "position_ids": 0, "source_ids": -1}
        batch = {key: torch.full((len(rows), width), fill, dtype=torch.long) for key, fill in fills.items()}
        batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            for key in fills:
                batch[key][i, :length] = torch.as_tensor(row[key], dtype=torch.long)
            batch["attention_mask"][i, :length] = 1
        return batch

    def _padding_free(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        columns = {key: [] for key in ("input_ids", "labels", "position_ids", "source_ids")}
        for row in rows:
            for key, values in columns.items():
                values.extend(row[key])
        batch = {key: torch.tensor(values, dtype=torch.long) for key, values in columns.items()}
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
        pad = self._padded_length(len(columns["input_ids"])) - len(columns["input_ids"])
        if pad:  # the padding is one more "example": positions from 0, nothing trained
            tail = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "source_ids": -1}
            for key, fill in tail.items():
                batch[key] = torch.cat([batch[key], torch.full((pad,), fill, dtype=torch.long)])
            batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(pad, dtype=torch.long)])
        return {key: value.unsqueeze(0) for key, value in batch.items()}
