"""`sdpa_varlen`: torch SDPA that attends within each example of a padding-free batch, and nothing more.

Plain sdpa keeps the examples of a padding-free row apart with a dense (T, T) mask over the whole row:
attention then costs the square of the batch's tokens (measured on SmolLM2-135M, CPU, 16 chat
examples in one 900-token row: 23% of a training step). Flash-attention's varlen kernels avoid that on
GPU; this does the same anywhere torch runs: one causal SDPA call per example, cut out of the row by
position_ids (each example starts at position 0).

It is sdpa everywhere else: a batch with an attention_mask (padded batches, generation with its KV
cache) goes to transformers' own `sdpa_attention_forward` with transformers' own mask. Only inside
`sft_forward` on a batch without an attention_mask (`documents_from_positions()`) is the dense mask
not built; the example boundaries then reach every layer as position_ids, also when gradient
checkpointing re-runs a layer in backward.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import weakref

import torch

from sft_exp import compat

NAME = "sdpa_varlen"
log = logging.getLogger(__name__)

# Set by sft_forward around a forward whose batch has no attention_mask: no dense mask is built then.
_SPLIT_BY_POSITIONS = contextvars.ContextVar("sft_exp_split_by_positions", default=False)


@contextlib.contextmanager
def documents_from_positions(enabled: bool = True):
    """Within: an sdpa_varlen model takes example boundaries from position_ids, not from a dense mask."""
    token = _SPLIT_BY_POSITIONS.set(enabled)
    try:
        yield
    finally:
        _SPLIT_BY_POSITIONS.reset(token)


def _mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return None if _SPLIT_BY_POSITIONS.get() else sdpa_mask(*args, **kwargs)


# Every layer gets the same position_ids tensor: read it once per forward (on GPU, one host sync, not one
# per layer). A weak reference: while the tensor lives no other tensor can be mistaken for it.
_last_spans: dict = {}


def _example_spans(position_ids: torch.Tensor, rows: int) -> list[list[tuple[int, int]]]:
    """Per batch row, the (start, end) of each example: a new one starts wherever the position is 0."""
    cached = _last_spans.get("tensor")
    if (
        cached is not None
        and cached() is position_ids
        and _last_spans["key"] == (compat.tensor_version(position_ids), rows)
    ):
        return _last_spans["spans"]
    spans = []
    for row in position_ids.expand(rows, -1).tolist():
        starts = [0] + [i for i, p in enumerate(row) if p == 0 and i > 0]
        spans.append(list(zip(starts, starts[1:] + [len(row)])))
    _last_spans.update(tensor=weakref.ref(position_ids), key=(compat.tensor_version(position_ids), rows), spans=spans)
    return spans


def _window_mask(length: int, window: int, device) -> torch.Tensor:
    """Causal mask of one example under a sliding window (transformers: kv_idx > q_idx - window)."""
    q = torch.arange(length, device=device).unsqueeze(1)
    k = torch.arange(length, device=device).unsqueeze(0)
    return ((k <= q) & (k > q - window)).view(1, 1, length, length)


def sdpa_varlen_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-function signature; query/key/value are (B, heads, T, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    same_length = query.shape[2] == key.shape[2]  # no KV cache: every key is one of this row's tokens
    if attention_mask is not None or not same_length or position_ids is None:
        if _SPLIT_BY_POSITIONS.get() and attention_mask is None:
            raise RuntimeError(
                f"{type(module).__name__} did not pass position_ids to its attention function: sdpa_varlen cannot "
                "tell the examples of a padding-free batch apart. Use model.attn_implementation=sdpa with "
                "data.padding_free=false, or flash_attention_2."
            )
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_ids=position_ids,
            **kwargs,
        )
    window = kwargs.get("sliding_window")
    rows = []
    for b, spans in enumerate(_example_spans(position_ids, query.shape[0])):
        parts = []
        for start, end in spans:
            mask = _window_mask(end - start, window, query.device) if window and end - start > window else None
            part, _ = sdpa_attention_forward(
                module,
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                mask,
                dropout=dropout,
                scaling=scaling,
                is_causal=is_causal,
                **kwargs,
            )
            parts.append(part)  # (1, length, heads, head_dim)
        rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return (torch.cat(rows) if len(rows) > 1 else rows[0]), None


def register() -> None:
    """Make `attn_implementation="sdpa_varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    AttentionMaskInterface.register(NAME, _mask)


def use_varlen_sdpa(model) -> bool:
    """Switch a model loaded with sdpa to sdpa_varlen (same results; padding-free batches cost no dense mask).

    False, with the model left on sdpa, where the model's code does not take registered attention functions.
    """
    if compat.attn_implementation(model) != "sdpa":
        return False
    if not getattr(model, "_supports_attention_backend", False):
        log.info(
            "%s does not take registered attention functions: padding-free batches keep sdpa's dense mask",
            type(model).__name__,
        )
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError) as error:  # correct either way: plain sdpa masks densely
        log.warning("%s stays on sdpa (%s): padding-free batches keep sdpa's dense mask", type(model).__name__, error)
        return False
    return True
