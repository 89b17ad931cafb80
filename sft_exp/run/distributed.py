"""Several processes, one run: the shared run folder, quiet non-main ranks, the FSDP/DeepSpeed presets,
DDP that survives an evaluation before training, and a process group left cleanly at exit.

torchrun, `accelerate launch` or a SLURM job (Hydra's submitit launcher) start the processes;
every rank composes the same config and calls train.run. The Trainer (with accelerate) does the
data-parallel work itself: `distributed=fsdp` and `distributed=deepspeed` only hand transformers
the TrainingArguments it already understands (`fsdp`/`fsdp_config`, `deepspeed`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
from pathlib import Path

from sft_exp import compat
from sft_exp.errors import ConfigError

# torch is imported where used: config validation runs before it loads.

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp", "deepspeed", "ulysses", "ring")
# Sequence parallelism (sft_exp.run.sequence_parallel) runs on the engine of a sharding strategy.
ENGINE_OF = {"ulysses": "deepspeed", "ring": "fsdp"}


def rank() -> int:
    """This process's rank, the one answer everywhere: the process group's once one exists, else the
    launcher's RANK (0 for a single process)."""
    dist = sys.modules.get("torch.distributed")  # never imports torch itself: preflight runs before it loads
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def requeued_job() -> bool:
    """A SLURM job on its second or later attempt (SLURM sets SLURM_RESTART_COUNT when it requeues a job)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


# ----------------------------------------------------------------------------- presets
def check_distributed_config(strategy: str) -> None:
    """A strategy the installed packages or this machine cannot run fails before anything loads."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.")
    engine = ENGINE_OF.get(strategy, strategy)
    if engine == "deepspeed":
        _check_deepspeed(strategy)
    elif engine == "fsdp":
        _check_fsdp2(strategy)
    explain_single_process(strategy)


def _check_deepspeed(strategy: str) -> None:
    from importlib.util import find_spec

    if find_spec("deepspeed") is None:  # not imported here: importing deepspeed takes seconds
        instead = (
            "distributed=fsdp (no extra package)"
            if strategy == "deepspeed"
            else "distributed=ring on GPUs (torch's own ring attention)"
        )
        raise ConfigError(
            f"distributed={strategy} needs the deepspeed package, which is not installed: "
            f"`pip install 'sft_exp[deepspeed]'` (or `pip install deepspeed`), or use {instead}."
        )


def _check_fsdp2(strategy: str) -> None:
    from importlib.metadata import version

    import torch
    from packaging.version import Version

    try:  # a submodule: hasattr(torch.distributed, "fsdp") is False until something imports it
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"distributed={strategy} uses FSDP2 (torch.distributed.fsdp.fully_shard), which torch {torch.__version__} "
            "lacks: `pip install -U 'torch>=2.6'`, or use distributed=ddp."
        ) from None
    needed = "1.6" if strategy == "fsdp" else "1.10"  # accelerate's ParallelismConfig(cp_size=) came in 1.10
    if Version(version("accelerate")) < Version(needed):
        raise ConfigError(f"distributed={strategy} (FSDP2) needs accelerate>={needed}: `pip install -U accelerate`.")


SHARDING_ARGUMENTS = ("fsdp", "fsdp_config", "deepspeed")


def explain_single_process(strategy: str) -> None:
    """fsdp/deepspeed/ulysses/ring started as one process: nothing to shard or split, so it trains plainly."""
    if strategy == "ddp" or world_size() > 1:
        return
    what = "split each row across" if strategy in ENGINE_OF else "shard across"
    log.warning(
        "distributed=%s in one process: there is no other rank to %s, so this trains as one plain "
        "process (same result). Start several with `torchrun --nproc_per_node N -m sft_exp "
        "distributed=%s ...`.",
        strategy,
        what,
        strategy,
    )


def training_arguments(strategy_args: dict, strategy: str = "ddp", split: int = 1) -> dict:
    """The TrainingArguments fields a strategy sets (distributed.training_args), for this machine; with
    sequence parallelism (`split` ranks per row) accelerate's `parallelism_config` too."""
    import torch

    args = dict(strategy_args or {})
    if world_size() <= 1:  # nothing to shard across (explain_single_process said so)
        return {k: v for k, v in args.items() if k not in SHARDING_ARGUMENTS}
    if not torch.cuda.is_available():
        # accelerate treats several CPU processes as one job only when told it runs on CPU (gloo).
        args = {"use_cpu": True, "ddp_backend": "gloo", **args}
    if strategy in ENGINE_OF:
        from sft_exp.run.sequence_parallel import parallelism_arguments

        args.update(parallelism_arguments(strategy, split))
    return args


def shard_on_cpu(accelerator, training_args) -> bool:
    """FSDP on several CPU processes (gloo): switch accelerate's state from DDP to FSDP.

    accelerate enables its FSDP plugin only for GPU-like distributed types; for MULTI_CPU
    (use_cpu=True, gloo) it drops the plugin and the model is silently DDP-wrapped. The plugin the
    Trainer built from `fsdp`/`fsdp_config` is installed as accelerate would on GPUs, so prepare()
    calls fully_shard and saving gathers full weights as usual. Returns whether it switched.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if training_args.fsdp_plugin_args is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    state = AcceleratorState()
    plugin = FullyShardedDataParallelPlugin(**training_args.fsdp_plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    compat.set_distributed_type(state, DistributedType.FSDP)
    return True


def refuse_sweep_under_launcher(multirun: bool) -> None:
    """`-m` under torchrun: every process would run the whole sweep, its jobs' ranks never meeting."""
    if multirun and world_size() > 1 and "SUBMITIT_EXECUTOR" not in os.environ:
        raise ConfigError(
            f"`-m` (a sweep) started under torchrun / accelerate launch ({world_size()} processes): each process "
            "would run every job of the sweep on its own. For several processes per job, let SLURM start them: "
            "`python -m sft_exp -m hydra/launcher=slurm hydra.launcher.tasks_per_node=N ...`; or run one "
            "`torchrun --nproc_per_node N -m sft_exp ...` per job, without -m."
        )


# ----------------------------------------------------------------------------- one run folder
def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run folder, on every rank.

    Each rank resolves hydra.run.dir itself; with the default `${now:...}` two ranks can straddle
    a second and pick different folders. Rank 0's choice wins and a non-main rank removes the
    folder its own Hydra made (only Hydra's files are in it at this point).
    """
    if world_size() <= 1:
        return run_dir
    import torch
    from accelerate import PartialState

    on_cpu = not torch.cuda.is_available()
    # Joins the process group of torchrun / accelerate launch, as the Trainer will (gloo on CPU).
    PartialState(cpu=on_cpu, backend="gloo" if on_cpu else None)
    atexit.register(leave_process_group)
    chosen = [str(run_dir)]
    torch.distributed.broadcast_object_list(chosen, src=0)
    shared = Path(chosen[0])
    if shared.resolve() != run_dir.resolve():
        _remove_hydra_folder(run_dir)
        log.warning("rank %d uses rank 0's run folder %s; fix it with hydra.run.dir=... to avoid this", rank(), shared)
    return shared


def decided_on_rank_zero(decide):
    """`decide()` on rank 0, its result on every rank: a choice read from the run folder's files (which rank 0
    may be writing) must be the same everywhere. Call after shared_run_dir (the process group exists)."""
    if world_size() <= 1:
        return decide()
    import torch.distributed as dist

    result = [decide() if rank() == 0 else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole (registered with atexit).

    A process that exits with its process group alive leaves it to interpreter finalization, where
    gloo's worker threads can still hold the work (and tensors) of the last collectives, e.g. DDP's
    gradient all-reduce; freeing them takes the GIL of a dying interpreter and the process aborts
    (SIGABRT) now and then (pytorch/pytorch PR 179291, issue 190489). No barrier: a rank that fails
    alone must not wait for the others, and destroying is local.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _remove_hydra_folder(folder: Path) -> None:
    """Delete a folder holding nothing but what Hydra writes at startup (.hydra/ and the job log)."""
    if not folder.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in folder.iterdir()):
        return
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    for log_file in folder.glob("*.log"):
        log_file.unlink(missing_ok=True)
    folder.rmdir()


def quiet_non_main_rank() -> None:
    """Non-main ranks log warnings and errors to the console only: the run folder's log is rank 0's."""
    if rank() == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
    logging.getLogger("sft_exp").setLevel(logging.WARNING)


def export_slurm_environment() -> None:
    """In a submitit job with several tasks (hydra.launcher.tasks_per_node > 1), set torchrun's variables.

    Each task is one rank: RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT come from SLURM's
    variables (submitit's own helper). A job that torchrun already started is left alone.
    """
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # Every task sees all the node's GPUs; the Trainer picks cuda:LOCAL_RANK.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# ----------------------------------------------------------------------------- DDP after evaluate()
def forget_evaluation_only_preparation(trainer) -> None:
    """Let train() wrap a model that an evaluate() before it prepared for evaluation only.

    Trainer.evaluation_loop on a fresh Trainer calls accelerator.prepare_model(evaluation_mode=True):
    no DDP wrapper, but accelerate marks the bare model `_is_accelerate_prepared`, and train()'s
    accelerator.prepare then returns it as it is: no DDP, so every rank steps with its own gradients
    and the replicas drift apart. Undo that preparation, so train() prepares the model as if no
    evaluation had run (the mixed-precision forward wrapper comes back with the training one).
    """
    from accelerate.utils import extract_model_from_parallel

    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # FSDP: evaluation_loop prepared it fully (accelerator.prepare, fully_shard), for training too.
        # DeepSpeed: SFTTrainer.evaluate_before_training evaluates inside train(), in the training engine.
        return
    model = trainer.model
    if trainer.model_wrapped is not model or not compat.forget_accelerate_preparation(model):
        return
    extract_model_from_parallel(model, keep_fp32_wrapper=False)  # restores the model's own forward


def check_gradients_are_averaged(trainer) -> None:
    """Under plain DDP the model that trains must be DistributedDataParallel, or the replicas drift apart."""
    import torch
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    parallelism = getattr(accelerator, "parallelism_config", None)
    data_parallel = accelerator.multi_device or accelerator.distributed_type == DistributedType.MULTI_CPU
    plain_ddp = data_parallel and not (
        trainer.is_deepspeed_enabled
        or trainer.is_fsdp_enabled
        or getattr(trainer, "is_distributed_loading_by_transformers", False)
        or (parallelism is not None and parallelism.tp_enabled)
    )
    if not plain_ddp or not any(p.requires_grad for p in trainer.model.parameters()):
        return
    wrapped = getattr(trainer.model_wrapped, "_orig_mod", trainer.model_wrapped)  # under torch.compile
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        raise RuntimeError(
            f"rank {rank()}: training under DDP with a model that is not DistributedDataParallel "
            f"({type(wrapped).__name__}): gradients would not be averaged across the {world_size()} processes. "
            "Was the model prepared (evaluate/predict) before train() in a way sft_exp does not undo?"
        )
