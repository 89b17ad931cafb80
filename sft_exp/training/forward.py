"""One SFT forward pass: the model's decoder, then the chunked LM head over supervised positions only.

The model is called through its own forward (so DDP, PEFT and checkpointing wrappers all run),
with a pre-hook on the LM head that captures the final hidden states and hands the head an
empty slice: the (B, L, V) logits are never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data.collator import TARGET_COLUMNS, shift_targets
from sft_exp.models.attention import documents_from_positions
from sft_exp.training.lm_head import chunked_head, head_spec, output_head
from sft_exp.training.losses import SFTLoss
from sft_exp.training.memory import no_offload

# Batch keys that are ours, not the model's.
_NOT_MODEL_INPUTS = (
    "labels",
    "source_ids",
    "loss_weights",
    "example_ids",
    "shift_labels",
    "shift_loss_weights",
    "shift_source_ids",
    "shift_example_ids",
)


@dataclass
class SFTOutput:
    loss: Tensor  # what to backprop
    num_supervised: Tensor  # the rest are detached sums over this batch's supervised tokens
    nll_sum: Tensor
    num_correct: Tensor
    entropy_sum: Tensor
    aux_loss: Optional[Tensor]
    source_loss_sum: Tensor  # (num_sources,) NLL sums, for loss/<source>
    source_count: Tensor  # (num_sources,)
    # per_example=True: (source id, source row, NLL sum, correct tokens, supervised tokens) per example of the batch
    examples: Optional[tuple] = None


def unwrap_parallel(model):
    """The model inside a DDP / DeepSpeed wrapper (`.module`): config and head live there.

    DeepSpeedEngine has a `config` of its own (a dict): a wrapper is anything with `.module` whose config
    is not a model's."""
    while hasattr(model, "module") and not hasattr(getattr(model, "config", None), "get_text_config"):
        model = model.module
    return model


def decoder_hidden(model, batch: dict):
    """Run `model` and return (final hidden states (B, L, H) as the LM head would see them, model output).

    `model` itself is called (wrappers such as DDP must see the forward); its config and head are the unwrapped one's.
    """
    captured = []

    def capture(_module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],)  # the head projects nothing

    inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    inputs["use_cache"] = False
    inner = unwrap_parallel(model)
    if getattr(inner.config.get_text_config(), "output_router_logits", False):
        inputs["output_router_logits"] = True
    # First of the head's pre-hooks: ZeRO-3 wraps a module's inputs to run its post-backward bookkeeping,
    # and the captured states must be the decoder's own (the head's module never sees a gradient).
    handle = output_head(inner).register_forward_pre_hook(capture, prepend=True)
    # A padding-free batch (no attention_mask): sdpa_varlen models cut examples out by position_ids, no dense mask.
    padding_free = "attention_mask" not in inputs and "position_ids" in inputs
    try:
        with documents_from_positions(padding_free):
            out = model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__} did not call its output embeddings once per forward")
    return captured[0], out


# The target columns shifted one position left (data.collator.shift_targets).
_SHIFTED = tuple(f"shift_{key}" for key in TARGET_COLUMNS)


def targets(batch: dict) -> dict:
    """The shifted target columns of `batch` (see shift_targets): carried by a split batch, else computed."""
    return {key: batch[key] for key in _SHIFTED if key in batch} if "shift_labels" in batch else shift_targets(batch)


def supervised_mask(shifted: dict) -> Tensor:
    """(B, L): position t is trained to predict the next token (shift_labels of `targets`)."""
    return shifted["shift_labels"] != IGNORE_INDEX


def supervised_weights(shifted: dict, mask: Tensor) -> Optional[Tensor]:
    """The loss weight of each supervised position's target (1-D, as `mask` selects), or None without weights."""
    weights = shifted.get("shift_loss_weights")
    return None if weights is None else weights[mask]


def weighted_count(batch: dict) -> Tensor:
    """The supervised targets of a batch (or of its shard), each counted by its loss weight: the loss's divisor."""
    shifted = targets(batch)
    mask = supervised_mask(shifted)
    weights = supervised_weights(shifted, mask)
    return mask.sum() if weights is None else weights.float().sum()


def sft_forward(
    model,
    batch: dict,
    loss_fn: SFTLoss,
    num_items_in_batch: Union[None, int, Tensor] = None,
    num_sources: int = 1,
    router_aux_loss_coef: Optional[float] = None,
    per_example: bool = False,
) -> SFTOutput:
    """Loss and metrics of one (micro-)batch; see SFTOutput. `router_aux_loss_coef` None: the config's own."""
    hidden, out = decoder_hidden(model, batch)
    shifted = targets(batch)
    mask = supervised_mask(shifted)
    spec = head_spec(unwrap_parallel(model))
    labels = shifted["shift_labels"][mask].to(spec.weight.device)
    with no_offload():  # backward needs the head's inputs first: moving them to CPU would only cost time
        log_probs, entropy, is_top1 = chunked_head(hidden[mask], labels, spec, loss_fn.chunk_size)

    count = mask.sum()
    per_token = loss_fn.per_token(log_probs)
    weights = supervised_weights(shifted, mask)
    if weights is not None:  # per-message weights: a token of weight 2 counts as two tokens, in the sum and the divisor
        weights = weights.to(per_token.device, per_token.dtype)
        per_token = per_token * weights
    normalizer = (count if weights is None else weights.sum()) if num_items_in_batch is None else num_items_in_batch
    normalizer = torch.as_tensor(normalizer, device=log_probs.device).clamp(min=1)
    loss = per_token.sum() / normalizer

    aux_loss = getattr(out, "aux_loss", None)
    if aux_loss is not None:
        coef = router_aux_loss_coef
        if coef is None:
            coef = getattr(unwrap_parallel(model).config.get_text_config(), "router_aux_loss_coef", 0.0)
        loss = loss + coef * aux_loss.to(loss.device)
        aux_loss = aux_loss.detach()

    nll = -log_probs.detach()
    source_loss_sum, source_count = _per_source(shifted, mask, nll, num_sources)
    return SFTOutput(
        loss=loss,
        num_supervised=count.detach(),
        nll_sum=nll.sum(),
        num_correct=is_top1.sum(),
        entropy_sum=entropy.sum(),
        aux_loss=aux_loss,
        source_loss_sum=source_loss_sum,
        source_count=source_count,
        examples=_per_example(shifted, mask, nll, is_top1) if per_example else None,
    )


def _per_example(shifted: dict, mask: Tensor, nll: Tensor, is_top1: Tensor) -> Optional[tuple]:
    """Sums per (source, source row) over the supervised tokens: what examples.parquet records."""
    example_ids = shifted.get("shift_example_ids")
    if example_ids is None:
        return None
    sources = shifted["shift_source_ids"][mask].to(nll.device).long()
    rows = example_ids[mask].to(nll.device).long()
    keys, inverse = torch.unique(sources * (1 << 32) + rows, return_inverse=True)
    sums = nll.new_zeros((3, len(keys))).float()
    sums[0].index_add_(0, inverse, nll.float())
    sums[1].index_add_(0, inverse, is_top1.float())
    sums[2].index_add_(0, inverse, torch.ones_like(nll, dtype=torch.float32))
    return keys >> 32, keys & ((1 << 32) - 1), sums[0], sums[1], sums[2]


def _per_source(shifted: dict, mask: Tensor, nll: Tensor, num_sources: int):
    sums = nll.new_zeros(num_sources)
    counts = torch.zeros(num_sources, dtype=torch.long, device=nll.device)
    source_ids = shifted.get("shift_source_ids")
    if source_ids is None:
        sums[0], counts[0] = nll.sum(), nll.numel()
        return sums, counts
    src = source_ids[mask].to(nll.device)
    if src.numel() and (src.min() < 0 or src.max() >= num_sources):
        raise ValueError(f"source_ids on supervised tokens must be in [0, {num_sources}), got {src.unique().tolist()}")
    sums.index_add_(0, src, nll)
    counts.index_add_(0, src, torch.ones_like(src))
    return sums, counts
