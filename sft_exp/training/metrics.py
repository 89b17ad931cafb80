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
        self.reset_loss()

    def reset_loss(self) -> None:
        self.loss_sum = None  # this rank's sum of the training step losses the Trainer returns
        self.steps = 0  # optimizer steps in the window

    def add_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's training loss (as training_step returns it). A non-finite one counts as the
        window's mean so far, as the Trainer's own logging_nan_inf_filter does."""
        loss = loss.detach().float()
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=loss.device)
        if not torch.isfinite(loss):
            loss = self.loss_sum.to(loss.device) / (1 + self.steps)
        self.loss_sum = self.loss_sum.to(loss.device) + loss

    def end_step(self) -> None:
        self.steps += 1

    def window_loss(self, accelerator) -> float:
        """Mean training loss per optimizer step over the window, averaged over ranks (the Trainer's `loss`)."""
        if self.loss_sum is None or not self.steps:
            return float("nan")
        total = self.loss_sum
        ranks = accelerator.num_processes if accelerator is not None else 1
        if ranks > 1:
            total = accelerator.reduce(total, "sum")
        value = total.item() / ranks / self.steps
        self.reset_loss()
        return value

    def export_state(self, accelerator) -> dict:
        """The window so far, summed over ranks (a collective under DDP), as JSON for a checkpoint."""
        reduce = accelerator is not None and accelerator.num_processes > 1
        state = {"steps": self.steps, "has_aux": self.has_aux}
        for name, value in (("sums", self.sums), ("loss_sum", self.loss_sum)):
            if reduce:  # every rank takes part, also one with nothing added yet
                size = self.width if name == "sums" else None
                value = accelerator.reduce(self._or_zeros(value, size, accelerator.device), "sum")
            state[name] = None if value is None else value.tolist()
        return state

    def load_state(self, state: dict) -> None:
        """Restore a window exported at a checkpoint (on rank 0 only: it holds every rank's sums)."""
        self.steps = int(state.get("steps", 0))
        self.has_aux = bool(state.get("has_aux", False))
        sums, loss_sum = state.get("sums"), state.get("loss_sum")
        self.sums = torch.tensor(sums, dtype=torch.float32) if sums is not None else None
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float32) if loss_sum is not None else None

    def _or_zeros(self, value, size, device) -> torch.Tensor:
        if value is not None:
            return value
        return torch.zeros(size, device=device) if size else torch.zeros((), device=device)

    @property
    def width(self) -> int:
        """Length of the sums vector: the fields, then each source's loss sum and token count."""
        return len(self.FIELDS) + 2 * self.num_sources

    def add(self, out) -> None:
        """Add one micro-batch's sums (an SFTForwardOutput from sft_exp.training.forward)."""
        device = out.num_supervised.device
        aux = out.aux_loss
        row = torch.stack(
            [
                out.num_supervised.float(),
                out.nll_sum.float(),
                out.num_correct.float(),
                out.entropy_sum.float(),
                aux.float() if aux is not None else torch.zeros((), device=device),
                torch.ones((), device=device) if aux is not None else torch.zeros((), device=device),
            ]
        ).detach()
        per_source = torch.cat([out.source_loss_sum.float(), out.source_count.float()]).detach()
        both = torch.cat([row, per_source])
        self.sums = both if self.sums is None else self.sums.to(device) + both
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
        source_loss, source_count = values[6 : 6 + k], values[6 + k : 6 + 2 * k]
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
