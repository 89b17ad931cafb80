"""Token-weighted SFT metrics accumulated between logging steps.

Sums (not per-batch means) are kept on device and reduced across ranks only when logged, so the
logged values are exact over every supervised token of the logging window, and no step pays a
device sync for metrics.
"""
from __future__ import annotations

from typing import Sequence

import torch


class SFTMetrics:
    FIELDS = ("num_supervised", "nll_sum", "num_correct", "entropy_sum", "aux_loss_sum", "aux_count")

    def __init__(self, num_sources: int = 1):
        self.num_sources = num_sources
        self.reset()

    def reset(self) -> None:
        self.sums = None  # lazily on the device of the first batch
        self.has_aux = False

    def add(self, out) -> None:
        """Add one micro-batch's sums (an SFTForwardOutput from sft_exp.sft_forward)."""
        device = out.num_supervised.device
        aux = out.aux_loss
        row = torch.stack([
            out.num_supervised.float(), out.nll_sum.float(), out.num_correct.float(), out.entropy_sum.float(),
            aux.float() if aux is not None else torch.zeros((), device=device),
            torch.ones((), device=device) if aux is not None else torch.zeros((), device=device),
        ]).detach()
        per_source = torch.cat([out.source_loss_sum.float(), out.source_count.float()]).detach()
        both = torch.cat([row, per_source])
        self.sums = both if self.sums is None else self.sums + both.to(self.sums.device)
        self.has_aux = self.has_aux or aux is not None

    def compute_and_reset(self, accelerator, source_names: Sequence[str]) -> dict:
        """Reduce across ranks and return the metrics of the window; empty when nothing was added."""
        if self.sums is None:
            return {}
        sums = self.sums
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums, "sum")
        values = sums.tolist()
        n, nll, correct, entropy, aux_sum, aux_count = values[:6]
        k = self.num_sources
        source_loss, source_count = values[6:6 + k], values[6 + k:6 + 2 * k]
        metrics = {
            "mean_token_accuracy": correct / n if n else 0.0,
            "entropy": entropy / n if n else 0.0,
            "nll": nll / n if n else 0.0,
            "num_supervised_tokens": int(n),
        }
        if self.has_aux and aux_count:
            metrics["aux_loss"] = aux_sum / aux_count
        if k > 1:
            for name, s, c in zip(source_names, source_loss, source_count):
                if c:
                    metrics[f"loss/{name}"] = s / c
        self.reset()
        return metrics
