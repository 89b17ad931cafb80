"""SFT losses: NLL and DFT, as per-token functions of log p(label).

The chunked LM head (sft_exp.training.lm_head) yields log p(label) for the supervised positions; a loss
turns each into a per-token loss that `sft_forward` sums and divides by the number of supervised
tokens in the whole accumulated batch.
"""

from __future__ import annotations

from torch import Tensor

from sft_exp.errors import ConfigError


class SFTLoss:
    name = "base"

    # chunk_size: positions per chunk of the LM head; bounds the logits held in memory at once.
    def __init__(self, chunk_size: int = 1024):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"loss.chunk_size must be a positive integer (positions per chunk), got {chunk_size!r}")
        self.chunk_size = chunk_size

    def per_token(self, log_probs: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(chunk_size={self.chunk_size})"


class NLLLoss(SFTLoss):
    """Negative log-likelihood of each supervised label."""

    name = "nll"

    def per_token(self, log_probs: Tensor) -> Tensor:
        return -log_probs


class DFTLoss(SFTLoss):
    """Dynamic Fine-Tuning (arXiv 2508.05629): each token's NLL weighted by its detached probability."""

    name = "dft"

    def per_token(self, log_probs: Tensor) -> Tensor:
        return -log_probs.detach().exp() * log_probs
