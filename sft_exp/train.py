"""run(cfg): build everything from the config, train, save, and return the final eval loss.

This is the only place that calls hydra.utils.instantiate; everything it builds takes plain
objects, so the same pieces work from Python without Hydra.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sft_exp.validation import validate_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train one job. Returns the final eval loss (what an Optuna sweep minimizes; NaN without eval data)."""
    started = time.monotonic()
    validate_config(cfg)  # seconds, before torch, any model or data loads
    from sft_exp import distributed

    distributed.export_slurm_environment()  # a multi-task SLURM job becomes torchrun-style ranks
    distributed.quiet_non_main_rank()

    import torch
    from hydra.utils import get_class, instantiate
    from transformers import set_seed

    from sft_exp import run_folder
    from sft_exp.adapters import parameter_counts, save_base_for_export, wrap_with_adapter
    from sft_exp.data import SFTCollator, prepare_datasets
    from sft_exp.models import align_special_tokens, load_model, load_tokenizer
    from sft_exp.checkpoints import StopOnSignal, resolve_resume
    from sft_exp.errors import TrainingInterrupted
    from sft_exp.tracking import RunRecorder

    run_dir = distributed.shared_run_dir(Path(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resolve_resume(cfg.trainer.resume_from_checkpoint, run_dir)  # a missing checkpoint fails here, not after loading
    is_main = distributed.rank() == 0
    set_seed(cfg.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))

    # Cheap objects first: a bad _target_ or argument fails here, before data and model load.
    loss = instantiate(cfg.loss)
    memory = instantiate(cfg.memory)
    optimizer_factory = instantiate(cfg.optimizer)
    peft_config = instantiate(cfg.peft, _convert_="all") if cfg.peft else None
    logger = instantiate(cfg.logger) if (cfg.logger and is_main) else None

    tokenizer = load_tokenizer(cfg.model)
    data = prepare_datasets(cfg.data, tokenizer, attn_implementation=cfg.model.attn_implementation)
    _log_data_stats(data)

    model = load_model(cfg.model, vocab_size=len(tokenizer))
    align_special_tokens(model, tokenizer)
    memory.apply(model)
    if peft_config is not None and not cfg.model.name_or_path and is_main:
        save_base_for_export(model, tokenizer, run_dir)  # a base built from config exists nowhere else
    model = wrap_with_adapter(model, peft_config)  # logs the trainable parameters

    resolved = run_folder.write_resolved_config(cfg, run_dir) if is_main else None
    if is_main:
        run_folder.write_run_info(
            run_dir, seed=cfg.seed, data_fingerprint=data.fingerprint, data_stats=data.stats,
            overrides=_hydra_overrides(),
        )
        if logger is not None:
            logger.start(run_dir, resolved, default_name=_job_name(), default_group=_sweep_group(),
                         resume=resume is not None)

    status, summary = "failed", {}
    try:
        trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
        if cfg.get("distributed") is not None:  # fsdp / deepspeed TrainingArguments
            trainer_kwargs["extra_args"] = {**distributed.training_arguments(cfg.distributed),
                                            **trainer_kwargs.get("extra_args", {})}
        sample_count = trainer_kwargs.pop("num_sample_generations")
        max_new_tokens = trainer_kwargs.pop("max_new_tokens")
        trainer_kwargs.pop("resume_from_checkpoint")  # resolved to a checkpoint folder above
        stopper = StopOnSignal()
        # Objects go straight to the class named by trainer._target_ (instantiate would wrap them in OmegaConf).
        trainer_cls = get_class(trainer_kwargs.pop("_target_"))
        trainer = trainer_cls(
            **trainer_kwargs, model=model, loss=loss, memory=memory, optimizer_factory=optimizer_factory,
            source_names=data.source_names, train_dataset=data.train, eval_dataset=data.eval,
            data_collator=SFTCollator(tokenizer.pad_token_id, padding_free=cfg.data.packing),
            processing_class=tokenizer, callbacks=[RunRecorder(run_dir, logger, resume=resume is not None), stopper],
            output_dir=str(run_dir / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed,
        )
        summary = {**parameter_counts(model), **_train_and_evaluate(trainer, data, resume, stopper, run_dir)}
        trainer.save_model(str(run_dir / "model"))
        if is_main:
            tokenizer.save_pretrained(str(run_dir / "model"))
            _write_samples(trainer.model, tokenizer, data, run_dir, sample_count, max_new_tokens)
        status = "completed"
    except TrainingInterrupted:
        status = "interrupted"
        raise
    finally:
        summary.update(status=status, wall_time_s=round(time.monotonic() - started, 2),
                       **run_folder.peak_memory_mb())
        if is_main:
            run_folder.write_json(run_dir / "summary.json", summary)
            if logger is not None:
                logger.summary(summary)
                logger.finish(exit_code=0 if status == "completed" else 1)
    log.info("run folder: %s", run_dir)
    return float(summary.get("eval_loss", math.nan))


def _train_and_evaluate(trainer, data, resume, stopper, run_dir) -> dict:
    """Eval before (the baseline), train, eval after; the summary of the three.

    A SIGTERM/SIGINT during training saves a checkpoint and raises TrainingInterrupted.
    """
    summary = {}
    if data.eval is not None and not resume:
        before = trainer.evaluate()
        summary.update({f"{k}_before": v for k, v in before.items() if k.startswith("eval_")})
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stopper.restore()
    stopper.raise_if_stopped(trainer.state, run_dir)
    train_metrics = dict(result.metrics)
    runtime = train_metrics.get("train_runtime") or math.nan
    num_tokens = trainer.num_tokens_seen()  # all ranks, as in metrics.jsonl
    summary.update(
        global_step=trainer.state.global_step,
        train_loss=train_metrics.get("train_loss"),
        train_runtime_s=runtime,
        num_tokens=num_tokens,
        train_tokens_per_s=num_tokens / runtime if runtime else None,
    )
    last_train = next((row for row in reversed(trainer.state.log_history) if "mean_token_accuracy" in row), {})
    summary.update({k: last_train[k] for k in ("mean_token_accuracy", "entropy", "nll") if k in last_train})
    if data.eval is not None:
        summary.update(trainer.evaluate())
    return summary


def _write_samples(model, tokenizer, data, run_dir: Path, count: int, max_new_tokens: int) -> None:
    from sft_exp.samples import generate_samples, save_and_print_samples

    if count <= 0 or not data.sample_prompts:
        return
    results = generate_samples(model, tokenizer, data.sample_prompts[:count], max_new_tokens=max_new_tokens)
    save_and_print_samples(results, run_dir)


def _log_data_stats(data) -> None:
    """One readable line; the full statistics go to run_info.json (and `python -m sft_exp.preview`)."""
    stats = data.stats
    dropped = sum(stats.get("rows_dropped", {}).values())
    packing = stats.get("packing") or {}
    log.info(
        "data: %d train rows from %d source(s), %d eval rows; %s tokens, %.1f%% supervised; "
        "%d rows dropped%s, %d truncated%s",
        len(data.train), len(data.source_names), len(data.eval) if data.eval is not None else 0,
        f"{stats.get('tokens', 0):,}", 100 * stats.get("supervised_fraction", 0.0), dropped,
        f" {stats['rows_dropped']}" if dropped else "", stats.get("rows_truncated", 0),
        f"; packed into {packing['packed_rows']} rows, {100 * packing['fill_rate']:.1f}% full" if packing else "",
    )


def _hydra_overrides() -> list:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _job_name() -> str | None:
    """In a sweep, a job's W&B name is its overrides (e.g. loss=dft,optimizer.lr=0.0003)."""
    overrides = _hydra_overrides()
    return ",".join(overrides) if overrides else None


def multirun_hydra_config():
    """Hydra's config of this job when it runs inside a sweep (`-m`), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get()
    return None


def _sweep_group() -> str | None:
    hydra_cfg = multirun_hydra_config()
    return Path(hydra_cfg.sweep.dir).as_posix() if hydra_cfg is not None else None
