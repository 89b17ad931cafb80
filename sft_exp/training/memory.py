"""Memory strategies (`memory=none | checkpointing | offload`).

A strategy is applied once to the base model (`apply`, before PEFT wraps it) and wraps the
forward pass of every training step (`forward_context`). Activation offloading follows
torchtune's OffloadActivations, simplified: saved tensors of at least `min_offload_bytes` go to
pinned CPU memory in forward and come back in backward; with streams, the copies run on a side
stream and backward prefetches the next tensors it will need.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, Set

import torch
from torch.autograd.graph import saved_tensors_hooks

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

# Backward reaches saved tensors in roughly reverse order; copying this many ahead hides the
# transfer behind the current layer's compute without holding many layers on the GPU at once.
PREFETCH = 2


class NoMemoryStrategy:
    """Keep every activation where it is."""

    def apply(self, model) -> None:
        return None

    def forward_context(self):
        return contextlib.nullcontext()

    def training_arguments(self) -> dict:
        """The TrainingArguments fields that say what this strategy does (training_args.bin records them)."""
        return {"activation_checkpointing": False}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GradientCheckpointing(NoMemoryStrategy):
    """Non-reentrant gradient checkpointing of every decoder layer (recompute in backward)."""

    def apply(self, model) -> None:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"memory=checkpointing: {type(model).__name__} does not support gradient checkpointing; use memory=none"
            )
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False

    def training_arguments(self) -> dict:
        # The Trainer enables checkpointing again from these: the same kwargs, so the same checkpointing.
        return {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}


class ActivationOffloading(NoMemoryStrategy):
    """Move saved activations to CPU during forward and back during backward (saves memory on CUDA only)."""

    # min_offload_bytes: saved tensors smaller than this stay where they are (moving them costs more than it saves).
    # use_streams: on CUDA, copy on a side stream and prefetch the next layer's activations in backward.
    # with_checkpointing: offloading the checkpointed layer inputs only (torchtune's pairing) saves the most.
    def __init__(self, min_offload_bytes: int = 1 << 20, use_streams: bool = True, with_checkpointing: bool = True):
        if min_offload_bytes < 0:
            raise ConfigError(f"memory.min_offload_bytes must be >= 0, got {min_offload_bytes}")
        self.min_offload_bytes = min_offload_bytes
        self.use_streams = use_streams
        self.with_checkpointing = with_checkpointing
        self._model = None

    def apply(self, model) -> None:
        if self.with_checkpointing:
            GradientCheckpointing().apply(model)
        self._model = model
        if not torch.cuda.is_available():
            log.warning("memory=offload: no CUDA device, so offloading activations to CPU saves nothing here")

    def forward_context(self):
        if not torch.cuda.is_available():
            return contextlib.nullcontext()
        return OffloadHooks(self.min_offload_bytes, self.use_streams, _storage_ptrs(self._model))

    def training_arguments(self) -> dict:
        return (GradientCheckpointing() if self.with_checkpointing else NoMemoryStrategy()).training_arguments()

    def __repr__(self) -> str:
        return (
            f"ActivationOffloading(min_offload_bytes={self.min_offload_bytes}, use_streams={self.use_streams}, "
            f"with_checkpointing={self.with_checkpointing})"
        )


def _storage_ptrs(model) -> Set[int]:
    """Storages of parameters and buffers: views of them (e.g. a transposed weight) are never moved."""
    if model is None:
        return set()
    tensors = list(model.parameters()) + list(model.buffers())
    return {t.untyped_storage().data_ptr() for t in tensors}


class OffloadHooks(saved_tensors_hooks):
    """One training step's saved-tensor hooks. A fresh instance per forward keeps no state across steps.

    `offload_cpu_tensors=True` copies tensors that are already on CPU too: it lets the tests run the
    pack/unpack path on a machine without CUDA.
    """

    def __init__(self, min_bytes: int, use_streams: bool, param_ptrs: Set[int], offload_cpu_tensors: bool = False):
        self.min_bytes = min_bytes
        self.param_ptrs = param_ptrs
        self.offload_cpu_tensors = offload_cpu_tensors
        self.side = torch.cuda.Stream() if use_streams and torch.cuda.is_available() else None
        self.offloaded: Dict[int, tuple] = {}  # id -> (cpu tensor, original device)
        self.prefetched: Dict[int, tuple] = {}  # id -> (device tensor, event)
        self.fetched: Set[int] = set()
        super().__init__(self._pack, self._unpack)

    def _should_move(self, t: torch.Tensor) -> bool:
        if t.device.type == "cpu" and not self.offload_cpu_tensors:
            return False
        if isinstance(t, torch.nn.Parameter) or t.element_size() * t.numel() < self.min_bytes:
            return False
        # Broadcast views (stride 0) would grow when copied; parameters' views are not activations.
        if 0 in t.stride() or t.untyped_storage().data_ptr() in self.param_ptrs:
            return False
        return True

    def _pack(self, t: torch.Tensor):
        if not self._should_move(t):
            return t
        key = len(self.offloaded)  # keys follow forward order; backward asks for them roughly in reverse
        cpu = torch.empty_like(t, device="cpu", pin_memory=t.is_cuda)
        if self.side is not None and t.is_cuda:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                cpu.copy_(t, non_blocking=True)
            t.record_stream(self.side)  # its memory is reused only once the copy has finished
        else:
            cpu.copy_(t)
        self.offloaded[key] = (cpu, t.device)
        return key

    def _unpack(self, handle):
        if isinstance(handle, torch.Tensor):
            return handle
        if handle in self.prefetched:
            t, event = self.prefetched.pop(handle)
            torch.cuda.current_stream().wait_event(event)
            t.record_stream(torch.cuda.current_stream())
        else:
            cpu, device = self.offloaded[handle]
            if self.side is not None and device.type == "cuda":  # the copy out (side stream) must have landed
                torch.cuda.current_stream().wait_stream(self.side)
            t = cpu.to(device, non_blocking=True) if device.type != "cpu" else cpu.clone()
        self.fetched.add(handle)
        self._prefetch_before(handle)
        return t

    def _prefetch_before(self, handle: int) -> None:
        """Start copying the next tensors backward will ask for (lower keys) on the side stream."""
        if self.side is None:
            return
        self.side.wait_stream(torch.cuda.current_stream())
        for key in range(handle - 1, max(handle - 1 - PREFETCH, -1), -1):
            if key in self.fetched or key in self.prefetched:
                continue
            cpu, device = self.offloaded[key]
            with torch.cuda.stream(self.side):
                t = cpu.to(device, non_blocking=True)
                event = self.side.record_event()
            self.prefetched[key] = (t, event)


def no_offload():
    """Saved tensors created inside stay where they are, even under OffloadHooks (innermost hooks win)."""
    return saved_tensors_hooks(lambda t: t, lambda t: t)
