"""Sequence parallelism: each row's tokens split across ranks (distributed=ulysses, distributed=ring).

The engines split and attend; sft_exp only hands them the batch and keeps its own parts right:
- `ulysses`: DeepSpeed's ALST/Ulysses (`UlyssesSPAttentionHF`, `UlyssesSPDataLoaderAdapter`) with ZeRO,
  through accelerate's `ParallelismConfig(sp_size=, sp_backend="deepspeed")` in TrainingArguments. Each
  rank holds 1/sp_size of a row; around attention an all-to-all gives each rank the whole row for
  num_attention_heads/sp_size heads.
- `ring`: torch's context parallelism (ring attention) through accelerate's FSDP2 `ParallelismConfig(cp_size=)`.

What is ours: the targets are shifted before the split (`SplitBatches`: a shard's last token predicts
the next shard's first), the loss divides by the supervised tokens of the whole global batch and is scaled
to the engine's gradient averaging (`loss_scale`), evaluation and generation run unsplit
(`unsplit_attention`), and a resume skips the split batches it already trained (`resumed_dataloader`).
"""

from __future__ import annotations

import contextlib
import logging
import os

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

SIZE_KEYS = {"ulysses": "sp_size", "ring": "cp_size"}
# The attention implementations each engine can split (what model.attn_implementation may be).
ULYSSES_ATTENTION = ("sdpa", "sdpa_varlen", "flash_attention_2", "flash_attention_3")
RING_ATTENTION = ("sdpa",)
# torch 2.13 on 2 gloo CPU processes (measured): its ring attention has no CPU kernel.
RING_ON_CPU = (
    "torch's ring attention has no CPU kernel: context_parallel on CPU tensors fails with "
    '"Operator aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding '
    'strategy registered" (it handles the CUDA flash, efficient and cuDNN SDPA kernels only)'
)


def launched_world() -> tuple[int, int]:
    """(processes in the job, processes on this node), from torchrun's variables or SLURM's."""
    world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or ""
    return world, int(local) if local.isdigit() else world


def split_size(strategy: str, sizes: dict) -> int:
    """How many ranks split one row: distributed.sp_size / cp_size, by default every process of a node."""
    value = sizes.get(SIZE_KEYS.get(strategy))
    return int(value) if value is not None else launched_world()[1]


def ranks_per_row(strategy: str, sizes: dict) -> int:
    """How many ranks this run splits each row across: 1 unless a sequence-parallel strategy has several processes."""
    if strategy not in SIZE_KEYS or launched_world()[0] <= 1:
        return 1
    return split_size(strategy, sizes)


# ----------------------------------------------------------------------------- before anything loads
def check_sequence_parallel(strategy: str, sizes: dict, model_cfg, data_cfg, trainer_cfg) -> None:
    """The sizes, the model's heads, its attention and the batch layout against the engine: one error each."""
    for other, key in SIZE_KEYS.items():
        if other != strategy and sizes.get(key) is not None:
            raise ConfigError(
                f"distributed.{key}={sizes[key]} is for distributed={other}; this run is "
                f"distributed={strategy}. Remove it, or use distributed={other}."
            )
    if strategy not in SIZE_KEYS:
        return
    key, size = SIZE_KEYS[strategy], split_size(strategy, sizes)
    world = launched_world()[0]
    if size < 1:
        raise ConfigError(f"distributed.{key}={size} must be at least 1 (the ranks that split one row).")
    if world > 1 and world % size:
        divisors = [d for d in range(1, world + 1) if world % d == 0]
        raise ConfigError(
            f"distributed.{key}={size} does not divide the {world} processes ({key} x data-parallel "
            f"groups = world size): set distributed.{key} to one of {divisors}."
        )
    if strategy == "ulysses":
        _check_ulysses(size, model_cfg, data_cfg, split=world > 1)
        _check_loader_workers(trainer_cfg, split=world > 1 and size > 1)
    else:
        _check_ring(model_cfg, data_cfg, split=world > 1 and size > 1)


def _check_ulysses(size: int, model_cfg, data_cfg, split: bool) -> None:
    attention = model_cfg.get("attn_implementation") or "sdpa"
    if attention not in ULYSSES_ATTENTION:
        raise ConfigError(
            f"distributed=ulysses with model.attn_implementation={attention}: DeepSpeed's Ulysses drops the "
            f"attention mask and splits {', '.join(ULYSSES_ATTENTION)} only (eager needs a dense (T, T) mask, "
            "flex_attention a block mask it cannot rebuild for packed rows). Set model.attn_implementation=sdpa."
        )
    if data_cfg.get("padding_free") is False:
        raise ConfigError(
            "distributed=ulysses with data.padding_free=false: Ulysses drops the attention mask, so it keeps "
            "examples apart by position_ids only, which padded batches do not carry. Remove data.padding_free "
            "(the default is padding-free rows under Ulysses) or set it to true."
        )
    config = text_config(model_cfg)
    if config is None:
        return
    if attention == "sdpa":  # sft_exp loads it as sdpa_varlen where the model's code takes registered attention
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        if model_class is not None and not getattr(model_class, "_supports_attention_backend", False):
            refuse_mixed_examples("ulysses", bool(data_cfg.get("packing")), "sdpa")
    if getattr(config, "output_router_logits", False):
        raise ConfigError(
            "distributed=ulysses with a mixture-of-experts model that trains its router's load-balancing loss "
            "(output_router_logits): each rank would balance the experts over its own part of the row only, "
            "which is not the loss one process computes. Use distributed=deepspeed or distributed=fsdp for it."
        )
    if split:
        _check_heads(size, config, model_cfg)


def _check_heads(size: int, config, model_cfg) -> None:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % size == 0 and (kv_heads % size == 0 or size % kv_heads == 0):
        return
    where = "model.init_config" if model_cfg.get("init_config") else f"the config of {model_cfg.get('name_or_path')}"
    fits = [d for d in range(1, heads + 1) if heads % d == 0 and (kv_heads % d == 0 or d % kv_heads == 0)]
    raise ConfigError(
        f"distributed.sp_size={size}: Ulysses gives each rank num_attention_heads / sp_size heads, and the "
        f"model has {heads} attention heads and {kv_heads} key/value heads ({where}); sp_size must divide the "
        f"heads, and divide or be a multiple of the key/value heads: set distributed.sp_size to one of {fits} "
        "(more processes than that form data-parallel groups: world size = sp_size x groups)."
    )


def refuse_mixed_examples(strategy: str, packing: bool, attention: str | None) -> None:
    """Ulysses drops the attention mask: packed examples stay apart only where attention reads position_ids
    (sdpa_varlen, flash-attention). Checked before loading where the model class tells, and after loading."""
    if strategy == "ulysses" and packing and attention == "sdpa":
        raise ConfigError(
            "distributed=ulysses with data.packing=true on a model that keeps plain sdpa (its code does not take "
            "registered attention functions, so sft_exp cannot load it as sdpa_varlen): Ulysses drops the attention "
            "mask and packed examples would attend to each other. Set data.packing=false (one example per row), "
            "or model.attn_implementation=flash_attention_2 (GPUs)."
        )


def _check_loader_workers(trainer_cfg, split: bool) -> None:
    """On CPU every rank pads its batch to the widest rank's (SplitBatches): a collective the loader's workers
    cannot take part in."""
    import torch

    workers = trainer_cfg.get("dataloader_num_workers") or 0
    if split and workers and not torch.cuda.is_available():
        raise ConfigError(
            f"distributed=ulysses on CPU with trainer.dataloader_num_workers={workers}: over gloo every rank's batch "
            "must be as wide as the others' (DeepSpeed gathers them), which the training process settles as it "
            "collates; set trainer.dataloader_num_workers=0."
        )


def _check_ring(model_cfg, data_cfg, split: bool) -> None:
    attention = model_cfg.get("attn_implementation") or "sdpa"
    if attention not in RING_ATTENTION:
        raise ConfigError(
            f"distributed=ring with model.attn_implementation={attention}: torch's ring attention "
            "replaces SDPA only. Set model.attn_implementation=sdpa."
        )
    for key in ("packing", "padding_free"):
        if data_cfg.get(key):
            raise ConfigError(
                f"distributed=ring with data.{key}=true: torch's ring attention is causal over the whole row and "
                "drops the mask that keeps packed or concatenated examples apart, so they would attend to each "
                f"other. Set data.{key}=false, or use distributed=ulysses (which keeps them apart)."
            )
    import torch

    if split and not torch.cuda.is_available():
        raise ConfigError(
            f"distributed=ring on CPU: {RING_ON_CPU}. Run it on GPUs, or split rows on CPU with "
            "distributed=ulysses (DeepSpeed's Ulysses runs on CPU processes over gloo)."
        )
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"distributed=ring needs torch's context parallelism, which torch {torch.__version__} "
            "lacks: `pip install -U 'torch>=2.7'`, or use distributed=ulysses."
        ) from None


def text_config(model_cfg):
    """The model's text config from model.init_config or its folder/hub id (no weights), or None if unreadable."""
    from transformers import AutoConfig

    init = model_cfg.get("init_config")
    try:
        if init:
            init = dict(init)
            return AutoConfig.for_model(init.pop("model_type"), **init).get_text_config()
        if model_cfg.get("name_or_path") and not model_cfg.get("gguf_file"):
            return AutoConfig.from_pretrained(
                model_cfg.name_or_path,
                revision=model_cfg.get("revision"),
                trust_remote_code=model_cfg.get("trust_remote_code", False),
            ).get_text_config()
    except (OSError, ValueError):
        return None  # the model load reports it
    return None


# ----------------------------------------------------------------------------- the run's pieces
def parallelism_arguments(strategy: str, size: int) -> dict:
    """TrainingArguments' `parallelism_config` for `size` ranks per row (world size already > 1), or {} at size 1.
    SFTTrainer completes it with the model (`ready_engine`)."""
    from accelerate.utils import ParallelismConfig

    world = launched_world()[0]
    if size <= 1:
        log.info(
            "distributed.%s=1: no row is split; this trains as distributed=%s over %d processes",
            SIZE_KEYS[strategy],
            "deepspeed" if strategy == "ulysses" else "fsdp",
            world,
        )
        return {}
    if strategy == "ring":
        from accelerate.utils import TorchContextParallelConfig

        return {
            "parallelism_config": ParallelismConfig(
                cp_size=size, dp_shard_size=world // size, cp_backend="torch", cp_handler=TorchContextParallelConfig()
            )
        }
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    # Evaluation runs unsplit (SFTTrainer.evaluate); the attention is the model's own, named by ready_engine.
    handler = DeepSpeedSequenceParallelConfig(
        sp_seq_length_is_variable=True, sp_attn_implementation="sdpa", sp_disable_in_eval=True
    )
    return {
        "parallelism_config": ParallelismConfig(
            sp_size=size, sp_backend="deepspeed", dp_replicate_size=world // size, sp_handler=handler
        )
    }


def ready_engine(args, model) -> None:
    """Ulysses, before the Trainer starts: DeepSpeed wraps the model's own attention implementation (it must
    be the model's: sft_exp's sdpa_varlen where the model loaded sdpa), and on CPU DeepSpeed's comm is started
    (its sequence-parallel groups need it; only its GPU path starts it by itself)."""
    config = getattr(args, "parallelism_config", None)
    if config is None or not (config.sp_enabled and config.sp_backend == "deepspeed"):
        return
    import torch

    from sft_exp import compat

    compat.name_ulysses_attention(config.sp_handler, compat.attn_implementation(unwrap_peft(model)))
    if not torch.cuda.is_available():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def unwrap_peft(model):
    """The transformers model under a PEFT wrapper (its config is the base model's either way)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_engine_attention(model, strategy: str) -> None:
    """Ring: torch's ring attention takes the place of SDPA itself, so the model runs plain sdpa (transformers'
    Trainer refuses any other), not sft_exp's sdpa_varlen."""
    from sft_exp import compat

    if strategy == "ring" and compat.attn_implementation(model) == "sdpa_varlen":
        model.set_attn_implementation("sdpa")


def split_collator(strategy: str, size: int, pad_token_id: int):
    """The batches a split run trains on (SplitBatches).

    Ulysses: padding-free rows (packed examples apart by position_ids), kept as the micro-batch's rows
    (its attention is built for per_device_train_batch_size rows), each padded at its end to a multiple of
    sp_size by one example that trains nothing. Ring: padded rows, to a multiple of 2 x cp_size (torch
    balances the causal work by cutting each row into 2 x cp_size chunks).
    """
    import torch

    from sft_exp.data.collator import SFTCollator

    if strategy == "ulysses":
        base = SFTCollator(pad_token_id, padding_free=True, separate_rows=True, pad_to_multiple_of=size)
    else:
        base = SFTCollator(pad_token_id, padding_free=False, pad_to_multiple_of=2 * size)
    log.info(
        "batches: %s, each row split across %d ranks (distributed=%s)",
        "padding-free rows" if strategy == "ulysses" else "padded rows",
        size,
        strategy,
    )
    # gloo's all_gather (Ulysses gathers each rank's batch) takes equal shapes only; NCCL's any.
    return SplitBatches(base, equal_widths=strategy == "ulysses" and not torch.cuda.is_available())


class SplitBatches:
    """A collator for batches split along the sequence: each also carries `shift_<target>` columns
    (sft_exp.data.collator.shift_targets), and with `equal_widths` every rank's batch has the same width.

    `equal_widths`: each rank pads its batch to the widest of all ranks' (one all-reduce per batch). Every
    rank collates the same number of batches in the same order (the Trainer's loaders are even), so the
    collective runs in step; it needs the loader in the training process (trainer.dataloader_num_workers=0).
    """

    def __init__(self, collator, equal_widths: bool = False):
        self.collator, self.equal_widths = collator, equal_widths

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        from sft_exp.data.collator import shift_targets

        width = self.collator.width(rows)
        if self.equal_widths and torch.distributed.is_initialized():
            widest = torch.tensor([width])
            torch.distributed.all_reduce(widest, op=torch.distributed.ReduceOp.MAX)
            width = int(widest)
        batch = self.collator(rows, width)
        batch.update(shift_targets(batch))
        return batch


def engine(accelerator) -> str | None:
    """'ulysses' or 'ring' where the accelerator splits rows, else None."""
    config = getattr(accelerator, "parallelism_config", None)
    if config is None:
        return None
    if config.sp_enabled and config.sp_backend == "deepspeed":
        return "ulysses"
    return "ring" if config.cp_enabled else None


def loss_scale(trainer) -> int:
    """What the loss, divided by every rank's supervised tokens, is multiplied by for the engine's gradient mean.

    The gradient one process computes is the sum of every rank's (each rank backpropagates its own tokens).
    DDP, FSDP2 (ring too) and ZeRO-3 before deepspeed 0.20.2 average over all ranks; ZeRO-1/2 (and ZeRO-3
    from 0.20.2, deepspeedai/DeepSpeed#8854) sum over a Ulysses group and average over the data-parallel ones.
    """
    accelerator = trainer.accelerator
    if engine(accelerator) != "ulysses":
        return accelerator.num_processes
    from importlib.metadata import version

    from packaging.version import Version

    averages_all = accelerator.state.deepspeed_plugin.zero_stage == 3 and Version(version("deepspeed")) < Version(
        "0.20.2"
    )
    return (
        accelerator.num_processes
        if averages_all
        else accelerator.num_processes // accelerator.parallelism_config.sp_size
    )


def counted_once(count, accelerator):
    """Every rank's supervised tokens, summed, counting a ring group's one batch once (each of its ranks holds it)."""
    return count // accelerator.parallelism_config.cp_size if engine(accelerator) == "ring" else count


def ring_context(accelerator, inputs: dict):
    """accelerate's context-parallel context over every per-token tensor of the batch, each sharded alike."""
    import functools

    import torch

    length = inputs["input_ids"].shape[1]
    buffers = [
        value for value in inputs.values() if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == length
    ]
    return functools.partial(
        accelerator.maybe_context_parallel,
        buffers=buffers,
        buffer_seq_dims=[1] * len(buffers),
        no_restore_buffers=set(buffers),
    )


@contextlib.contextmanager
def unsplit_attention(model):
    """Within: the model attends as one process does (evaluation, generation). Ulysses puts its attention in
    place of the model's in transformers' registry, for the whole process, as the registry instance's own
    entry; without that entry the function registered for every instance (the original) shows through."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as registry

    from sft_exp import compat

    name = compat.attn_implementation(model)
    try:
        split = registry[name]
        del registry[name]
    except KeyError:  # nothing in its place (or no name): attention is not split
        split = None
    try:
        yield
    finally:
        if split is not None:
            registry[name] = split


def resumed_dataloader(dataloader, num_batches: int, skip_first_batches):
    """Ulysses' adapter without the `num_batches` micro-batches already trained: each of its micro-batches is
    one rank's batch split, so the wrapped loader skips num_batches // sp_size of its own batches."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import (
        UlyssesSPDataLoaderAdapter,
    )

    whole, part = divmod(num_batches, dataloader.sp_world_size)
    adapter = UlyssesSPDataLoaderAdapter(
        skip_first_batches(dataloader.dl, whole),
        sp_rank=dataloader.sp_rank,
        sp_group=dataloader.sp_group,
        sp_world_size=dataloader.sp_world_size,
        device=dataloader.device,
    )
    for _ in range(part):  # a collective refill: every rank skips alike
        next(adapter)
    return adapter
