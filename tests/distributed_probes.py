"""TrainerCallbacks the distributed tests add to a real run through the `callbacks` group:

    +callbacks.nan._target_=tests.distributed_probes.NaNLossOnOneRank +callbacks.nan.rank=1 +callbacks.nan.step=2
    +callbacks.digest._target_=tests.distributed_probes.WeightDigest +callbacks.digest.folder=DIR

The trainer, DDP and the optimizer run unchanged; these only make one rank's loss NaN and record weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class NaNLossOnOneRank(TrainerCallback):
    """On `rank`, optimizer step `step` (1-based) embeds its inputs as NaN: that rank's loss is NaN."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step, self.handle = rank, step, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if _rank() == self.rank and state.global_step + 1 == self.step:
            nan_output = lambda _module, _inputs, output: output * float("nan")  # noqa: E731
            self.handle = model.get_input_embeddings().register_forward_hook(nan_output)

    def on_step_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class WeightDigest(TrainerCallback):
    """At the end of training each rank writes `folder`/rank<N>.json: its weights' hash and whether all are finite."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest, finite = hashlib.sha256(), True
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            finite = finite and bool(torch.isfinite(tensor).all())
            digest.update(name.encode() + tensor.numpy().tobytes())
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"sha256": digest.hexdigest(), "finite": finite, "global_step": state.global_step}
        (self.folder / f"rank{_rank()}.json").write_text(json.dumps(record))


class ShardingProbe(TrainerCallback):
    """After the first optimizer step each rank writes `folder`/rank<N>.json: how its model is wrapped.

    `dtensor_params` counts parameters that are DTensors (FSDP2 shards), `ds_params` DeepSpeed's (ZeRO-3
    partitions, which hold no data outside the engine's forward), `local_numel` the elements this rank holds,
    `full_numel` the model's, `fsdp_modules` the modules fully_shard wrapped.
    """

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        from torch.distributed.tensor import DTensor

        params = list(model.parameters())
        dtensors = [p for p in params if isinstance(p, DTensor)]
        record = {
            "dtensor_params": len(dtensors),
            "params": len(params),
            "local_numel": sum(_held(p).numel() for p in params),
            "head_weight_numel": model.get_output_embeddings().weight.numel(),  # 0: a ZeRO-3 partition
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "ds_params": sum(hasattr(p, "ds_id") for p in params),
            "fsdp_modules": sum(type(m).__name__.startswith("FSDP") for m in model.modules()),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{_rank()}.json").write_text(json.dumps(record))


def _held(param):
    """What this rank stores of `param`: its FSDP2 shard, its ZeRO-3 partition, or the whole tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return param.to_local()
    return getattr(param, "ds_tensor", param)


class KillSelfAtStep(TrainerCallback):
    """At optimizer step `step` (1-based) the process SIGKILLs itself: a job that dies without a result."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class SplitProbe(TrainerCallback):
    """The position ids each rank's decoder saw in its first training forward, in `folder`/rank<N>.json: under
    sequence parallelism each rank's are its part of the row (rank 0 the start, rank 1 the rest)."""

    def __init__(self, folder: str):
        self.folder, self.handle = Path(folder), None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, args_, kwargs_):
            if module.training and self.handle is not None:
                positions = kwargs_.get("position_ids")
                record = {"position_ids": positions.tolist(), "input_ids_shape": list(kwargs_["input_ids"].shape)}
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / f"rank{_rank()}.json").write_text(json.dumps(record))
                self.handle.remove()
                self.handle = None

        self.handle = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
