"""run(cfg): the recipe. Validate, build every component from its `_target_`, train, save.

This is the only module that reads the config and calls hydra.utils.instantiate. Everything it
builds takes plain objects, so the same pieces work from Python without Hydra.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from sft_exp import compat
from sft_exp.atomic import read_json
from sft_exp.errors import ConfigError, TrainingInterrupted
from sft_exp.preflight import plain, validate_config
from sft_exp.run import hydra_job
from sft_exp.run.defaults_note import data_defaults

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train one job. Returns the final value of `cfg.objective` (what a sweep optimizes; NaN without it)."""
    started = time.monotonic()
    data_settings, n_threads, run_dir, relaunch = _before_torch(cfg)
    if relaunch.objective is not None:  # the folder holds this run, complete
        return relaunch.objective
    from transformers import set_seed  # torch loads here, after every check

    from sft_exp import system

    system.apply(n_threads)
    compat.load_engines_only_where_used()  # DeepSpeed and bitsandbytes load in a run that uses them alone

    from sft_exp.run import distributed
    from sft_exp.training.checkpoints import resolve_resume

    resume = resolve_resume(relaunch.resume_from or cfg.resume_from_checkpoint, run_dir)  # a missing one fails here
    done = _already_trained(resume, cfg, run_dir)
    if done is not None:
        return done
    if resume and cfg.resume_from_checkpoint is None:  # a relaunch, or a requeued SLURM job, resumes by itself
        cfg.resume_from_checkpoint = resume  # what it resumed from, for the callbacks and resolved_config.yaml
    is_main = distributed.rank() == 0
    set_seed(cfg.seed)
    built = _components(cfg, run_dir, is_main)  # before data and model load: a bad _target_ fails in seconds
    tokenizer = built.model_loader.load_tokenizer()
    data = _prepare_data(data_settings, tokenizer, built)
    model, attention = _load_model(cfg, built, tokenizer, data_settings.packing, run_dir, is_main)
    for evaluator in built.evaluators:
        evaluator.use_heldout(data.heldout_examples)
    if is_main:
        _write_run_files(cfg, run_dir, data, tokenizer, built, resume)
    collator = _collator(cfg, data_settings, tokenizer.pad_token_id, attention)
    # The trainer is built inside _train_and_save's try, so a failure there is recorded (summary.json) as well.
    build = functools.partial(_trainer, cfg, run_dir, built, model, tokenizer, data, collator, started)
    summary = _train_and_save(build, model, tokenizer, built, run_dir, resume, started, is_main)
    return float(summary.get(cfg.objective, math.nan))


def _prepare_data(data_settings, tokenizer, built: Components):
    """The training and eval rows (sft_exp.data.prepare_datasets), checked against what the run evaluates on."""
    from sft_exp.data import describe, prepare_datasets

    data = prepare_datasets(
        data_settings,
        tokenizer,
        attn_implementation=built.model_loader.attn_implementation,
        model_context=model_context(built.model_loader),
        eval_texts=_eval_texts(data_settings, built.evaluators),
    )
    tokenizer.chat_template = data.chat_template or tokenizer.chat_template  # saved and used as trained
    log.info(describe(data))
    return data


def _load_model(cfg: DictConfig, built: Components, tokenizer, packing: bool, run_dir: Path, is_main: bool):
    """The model as it trains: its attention, the memory strategy applied, the adapter wrapped; and its attention."""
    from sft_exp.models.adapters import save_base_for_export, wrap_with_adapter
    from sft_exp.run import sequence_parallel

    model = built.model_loader.load_model(tokenizer)
    sequence_parallel.use_engine_attention(model, cfg.distributed.strategy)
    attention = compat.attn_implementation(model)  # sdpa becomes sdpa_varlen where the model allows it
    sequence_parallel.refuse_mixed_examples(cfg.distributed.strategy, packing, attention)
    built.memory.apply(model)
    if built.peft_config is not None and not built.model_loader.name_or_path and is_main:
        save_base_for_export(model, tokenizer, run_dir)  # a base built from config exists nowhere else
    return wrap_with_adapter(model, built.peft_config), attention  # wrapping logs the trainable parameters


def _trainer(cfg: DictConfig, run_dir: Path, built: Components, model, tokenizer, data, collator, started: float):
    """The SFTTrainer of the run (the trainer group's keys are in `args`: training_arguments)."""
    return built.trainer_factory.func(
        model=model, args=training_arguments(cfg, run_dir), loss=built.loss, memory=built.memory,
        optimizer_factory=built.optimizer, source_names=data.source_names, train_dataset=data.train,
        eval_dataset=data.eval, processing_class=tokenizer, callbacks=[*built.callbacks, *built.loggers],
        evaluators=built.evaluators, run_started=started, data_collator=collator,
    )  # fmt: skip


@dataclass
class Components:
    """What a run builds from its config before any data or weights: each `_target_` instantiated and checked."""

    loss: Any
    memory: Any
    optimizer: Any
    trained_with: dict  # the arguments it trains with (optimizer, schedule), for run_info.json
    peft_config: Any
    loggers: list
    callbacks: list
    evaluators: list
    model_loader: Any
    trainer_factory: Any  # a _partial_ of SFTTrainer


def _components(cfg: DictConfig, run_dir: Path, is_main: bool) -> Components:
    """The cheap objects, first: a bad _target_ or argument fails here, before data and model load."""
    from sft_exp.evaluation import build_evaluators
    from sft_exp.training.arguments import recorded

    loss, memory, optimizer = instantiate(cfg.loss), instantiate(cfg.memory), instantiate(cfg.optimizer)
    # TrainingArguments' own checks fail here, before the data; built again for the trainer, after the model
    # loads: under ZeRO-3 the arguments alive while a model is built make transformers partition it (zero.Init).
    trained_with = recorded(training_arguments(cfg, run_dir), optimizer)
    peft_config = instantiate(cfg.peft, _convert_="all") if cfg.peft else None
    loggers = _instantiate_each(cfg.logger) if is_main else []  # rank 0 alone logs
    callbacks = _instantiate_each(cfg.callbacks)
    evaluators = build_evaluators(cfg.evals, run_dir / "evals")  # tasks built and checked here, then yours
    model_loader = instantiate(cfg.model, _convert_="all")
    trainer_factory = instantiate(cfg.trainer, _convert_="all")  # a _partial_ of SFTTrainer
    return Components(
        loss,
        memory,
        optimizer,
        trained_with,
        peft_config,
        loggers,
        callbacks,
        evaluators,
        model_loader,
        trainer_factory,
    )


def _train_and_save(
    build_trainer, model, tokenizer, built: Components, run_dir: Path, resume: str | None, started: float, is_main: bool
) -> dict:
    """Build the trainer, train and evaluate (train_and_evaluate), save the model, its tokenizer and serving
    files (pushed where asked); the summary. Whatever happens, summary.json records how it ended (completed,
    pruned, interrupted or failed), the wall time and the peak memory (rank 0), and the error is raised."""
    from sft_exp.models.adapters import parameter_counts
    from sft_exp.run import folder as run_folder
    from sft_exp.run import hub_push
    from sft_exp.run.model_card import save_serving_files

    status, summary, trainer = "failed", {}, None
    try:
        trainer = build_trainer()
        summary = {**parameter_counts(model), **train_and_evaluate(trainer, resume)}
        trainer.save_model(str(run_dir / "model"))
        if is_main:
            tokenizer.save_pretrained(str(run_dir / "model"))
        status = "pruned" if _was_pruned(built.callbacks) else "completed"  # a sweep's pruner may stop a trial early
        if is_main:
            save_serving_files(model, run_dir, {**summary, "status": status})
            summary.update(hub_push.push_final(built.callbacks, run_dir / "model"))
    except TrainingInterrupted as stop:
        status = "interrupted"
        if is_main and trainer is not None:  # its checkpoint's record of this segment: the whole process's time
            trainer.segments.record_stop(run_dir / "checkpoints" / f"checkpoint-{stop.step}")
        raise
    finally:  # a resumed run's wall time: its earlier segments' too
        wall = trainer.segments.whole_wall_s() if trainer is not None else time.monotonic() - started
        summary.update(status=status, wall_time_s=round(wall, 2), **run_folder.peak_memory_mb())
        if is_main:
            run_folder.finish_run(run_dir, summary, built.loggers)
    return summary


def _before_torch(cfg: DictConfig):
    """What is checked and decided in seconds, before torch loads (in one process): the config, the data
    settings, the CPU threads, the run folder (rank 0's, on every rank) and what this launch does with a run
    the folder already holds: continue it (the same settings) or stop and leave it as it was; never overwrite it."""
    from sft_exp import system
    from sft_exp.run import distributed
    from sft_exp.training.relaunch import decide

    distributed.export_slurm_environment()  # a multi-task SLURM job becomes torchrun-style ranks
    distributed.quiet_non_main_rank()  # first: the run folder's log is rank 0's alone
    validate_config(cfg)
    data_settings = instantiate(cfg.data)  # checks sources and settings
    said = "" if on_demo_data(data_settings) else data_defaults(data_settings, cfg.trainer, hydra_job.overrides())
    if said:  # the defaults a user's data trains with, where TRL's differ
        log.info(said)
    n_threads = system.prepare(cfg.trainer.get("threads"))  # passive waiting: must precede torch's OpenMP
    run_dir = distributed.shared_run_dir(Path(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    default_evals_off_demo(cfg, data_settings)  # before the config is compared with the folder's
    return data_settings, n_threads, run_dir, decide(cfg, run_dir)


def _eval_texts(data_settings, evaluators: list) -> list:
    """What the run's evaluations score, for data.decontamination (nothing to read when the check is off)."""
    from sft_exp.evaluation.texts import evaluation_texts

    return evaluation_texts(evaluators) if data_settings.decontamination.mode != "off" else []


def _already_trained(resume: str | None, cfg: DictConfig, run_dir: Path) -> float | None:
    """Resuming a checkpoint at trainer.max_steps: the run's objective if its folder is complete (nothing
    is trained or written), else an error saying how to train on."""
    from sft_exp.training.checkpoints import finished_at

    step = finished_at(resume, cfg.trainer.get("max_steps"))
    if step is None:
        return None
    more = f"to train on, raise trainer.max_steps (e.g. trainer.max_steps={2 * step}) with resume_from_checkpoint"
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") == "completed" and summary.get("global_step") == step:
        log.info(
            "%s is at step %s (trainer.max_steps=%s) and the run is complete (summary.json): nothing to train; %s",
            resume,
            step,
            cfg.trainer.max_steps,
            more,
        )
        return float(summary.get(cfg.objective, math.nan))
    raise ConfigError(
        f"{resume} is at step {step}, trainer.max_steps={cfg.trainer.max_steps}: nothing is left to "
        f"train (its weights are the final ones); {more}."
    )


def default_evals_off_demo(cfg: DictConfig, data_settings) -> None:
    """The default `evals` (the heldout task, exact match on short answers) is the demo's: on a user's own
    data.sources it measures nothing and costs minutes, so there the run evaluates what TRL does (eval
    loss and token accuracy) and a task only when asked (`evals=heldout`, `evals=[heldout,gsm8k]`). Only the
    heldout task goes: what an experiment file adds to `evals` (another task, an evaluator of your own) stays."""
    from omegaconf import open_dict

    overrides = hydra_job.overrides()
    asked = any(o.lstrip("+~").startswith("evals") for o in overrides) or not _hydra_chose("evals", "heldout")
    if asked or on_demo_data(data_settings) or "heldout" not in (cfg.get("evals") or {}):
        return
    kept = {name: spec for name, spec in cfg.evals.items() if name != "heldout"}
    log.info(
        "evals: eval loss and token accuracy%s (the heldout task is the demo's default; on your data ask "
        "for it with evals=heldout)",
        f", and {', '.join(kept)}" if kept else "",
    )
    with open_dict(cfg):
        cfg.evals = kept


def on_demo_data(data_settings) -> bool:
    """Whether a run trains on the demo data alone (the embedded default's)."""
    from sft_exp.paths import asset_path

    demo = {str(asset_path("demo/train.jsonl"))}
    return {str(Path(source.path).resolve()) for source in data_settings.sources} <= demo


def _hydra_chose(group: str, option: str) -> bool:
    """Whether Hydra composed this run with `group=option` (False outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().runtime.choices.get(group) == option


def model_context(model_loader) -> int | None:
    """The model's max_position_embeddings, read from its config alone (no weights): bounds data.max_length."""
    if model_loader.init_config:
        return model_loader.init_config.get("max_position_embeddings")
    if not model_loader.name_or_path or model_loader.gguf_file:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model_loader.name_or_path, revision=model_loader.revision, trust_remote_code=model_loader.trust_remote_code
        )
    except (OSError, ValueError):
        return None  # the model load that follows reports it
    return getattr(config, "max_position_embeddings", None)


def train_and_evaluate(trainer, resume) -> dict:
    """Evaluate before (the baseline), train, evaluate after; the summary of the three.

    The evaluation after training is skipped when the Trainer's eval_steps already evaluated the last
    step: a step is never evaluated twice. A SIGTERM/SIGINT ends training with a checkpoint and raises.
    """
    summary = {}
    if not resume:
        trainer.evaluate_before_training()  # now, or (DeepSpeed) as train() starts
    trainer.train(resume_from_checkpoint=resume)
    from sft_exp.run.scores import whole_run_loss

    rows = trainer.state.log_history
    before = trainer.metrics_before_training or _baseline_row(Path(trainer.args.output_dir).parent)
    summary.update({f"{k}_before": v for k, v in before.items() if k.startswith("eval_")})
    num_tokens = trainer.num_tokens_seen()  # all ranks, as in metrics.jsonl
    summary.update(global_step=trainer.state.global_step, train_loss=whole_run_loss(rows), num_tokens=num_tokens)
    # Over every segment of a resumed run: its tokens over its training time, not over the last segment's.
    summary.update(trainer.segments.whole_run(trainer.state.global_step, num_tokens))
    summary.update(last_window(rows))
    last_eval = next((row for row in reversed(rows) if any(k.startswith("eval_") for k in row)), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        summary.update({k: v for k, v in last_eval.items() if k.startswith("eval_")})
    else:
        summary.update(trainer.evaluate())
    return summary


def _baseline_row(run_dir: Path) -> dict:
    """A resumed run's evaluation before training, done by its first segment: metrics.jsonl's step-0 row."""
    from sft_exp.atomic import read_jsonl
    from sft_exp.run.recorder import METRICS_FILE

    rows = read_jsonl(run_dir / METRICS_FILE)
    return next((row for row in rows if row.get("step") == 0 and any(k.startswith("eval_") for k in row)), {})


def last_window(rows: list) -> dict:
    """The last logging window's token metrics, named as such (summary.json's train_loss is the whole run's)."""
    windows = [row for row in rows if "mean_token_accuracy" in row and "loss" in row]
    if not windows:
        return {}
    earlier = [row["step"] for row in rows if "loss" in row and row["step"] < windows[-1]["step"]]
    figures = {
        f"last_window_{k}": windows[-1][k]
        for k in ("loss", "mean_token_accuracy", "entropy", "nll")
        if k in windows[-1]
    }
    return {**figures, "last_window_steps": [(max(earlier) if earlier else 0) + 1, windows[-1]["step"]]}


def training_arguments(cfg: DictConfig, run_dir: Path | None = None):
    """The TrainingArguments a run trains with (its training_args.bin), from the composed config alone: no
    model, no data. The trainer group's keys; what the other groups set (the optimizer's learning rate, weight
    decay and betas, the memory strategy's checkpointing, the loggers as report_to, the seed, the run folder);
    the distributed strategy's fields; then trainer.extra_args, which may set none of those. `run_dir`: the run
    folder (default cfg.run_dir, Hydra's output dir; give it where Hydra's runtime is not set)."""
    from hydra.utils import get_class

    from sft_exp.run import distributed
    from sft_exp.training import arguments
    from sft_exp.training.trainer import build_training_arguments

    keywords = dict(instantiate(cfg.trainer, _convert_="all").keywords)
    extra_args = keywords.pop("extra_args", None) or {}
    strategy_args = distributed.training_arguments(
        plain(cfg.distributed.training_args), cfg.distributed.strategy, split=_split(cfg)
    )
    arguments.refuse_owned_extra_args(extra_args, keywords, strategy_args)
    memory = instantiate(cfg.memory)
    loggers = [get_class(node._target_).name for node in (cfg.logger or {}).values() if node is not None]
    try:
        return build_training_arguments(
            output_dir=str(Path(run_dir or cfg.run_dir) / "checkpoints"),
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=arguments.report_to(loggers),
            **arguments.optimizer_arguments(instantiate(cfg.optimizer)),
            **getattr(memory, "training_arguments", dict)(),
            **keywords,
            extra_args={**strategy_args, **extra_args},
        )
    except ValueError as err:  # TrainingArguments' own checks, e.g. load_best_model_at_end without evaluations
        raise ConfigError(f"the trainer settings (trainer.*, trainer.extra_args) do not go together: {err}") from None


def _split(cfg: DictConfig) -> int:
    """How many ranks split each row (sequence parallelism); 1: none."""
    from sft_exp.run.sequence_parallel import ranks_per_row

    return ranks_per_row(cfg.distributed.strategy, {k: cfg.distributed.get(k) for k in ("sp_size", "cp_size")})


def _collator(cfg: DictConfig, data_settings, pad_token_id: int, attention: str | None):
    """The batches: as data.packing / data.padding_free say, or as the sequence-parallel engine needs them."""
    from sft_exp.data import collator_for
    from sft_exp.run.sequence_parallel import split_collator

    if _split(cfg) > 1:
        return split_collator(cfg.distributed.strategy, _split(cfg), pad_token_id)
    return collator_for(
        pad_token_id,
        packing=data_settings.packing,
        padding_free=data_settings.padding_free,
        attn_implementation=attention,
    )


def _was_pruned(callbacks: list) -> bool:
    from sft_exp.sweeps.pruning import TrialPruning

    return any(isinstance(callback, TrialPruning) and callback.pruned for callback in callbacks)


def _instantiate_each(group: DictConfig) -> list:
    """A dict of `_target_`s (callbacks, logger) -> the objects, in order; null entries are switched off."""
    return [instantiate(node, _convert_="all") for node in (group or {}).values() if node is not None]


def _write_run_files(cfg: DictConfig, run_dir: Path, data, tokenizer, built: Components, resume: str | None) -> None:
    """resolved_config.yaml and run_info.json (with every resume and what it changed, what each score rests on,
    the arguments it trains with and how often the data ends a turn), then start the trackers (rank 0)."""
    from sft_exp.data.statistics import end_of_turn_stats
    from sft_exp.data.templates import end_of_turn_token
    from sft_exp.loggers import RunDescription
    from sft_exp.run import folder as run_folder
    from sft_exp.run.scores import evaluation_record

    data.stats["end_of_turn"] = end_of_turn_stats(data.train, end_of_turn_token(tokenizer.chat_template, tokenizer))
    resolved = plain(cfg)
    resumes = run_folder.resume_record(run_dir, resolved, resume) if resume else []
    if resumes and resumes[-1]["changed"]:
        log.warning(
            "resumed with changed settings (%s): a straight run of the new settings may not reproduce this run",
            ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in resumes[-1]["changed"].items()),
        )
    run_folder.write_resolved_config(resolved, run_dir)
    run_folder.write_contamination(run_dir, data.contamination)
    run_folder.write_run_info(
        run_dir,
        seed=cfg.seed,
        data_fingerprint=data.fingerprint,
        data_stats=data.stats,
        overrides=hydra_job.overrides(),
        extra={
            "trained_with": built.trained_with,
            "evaluations": evaluation_record(built.evaluators, data.stats),
            **({"resumes": resumes} if resumes else {}),
        },
    )
    description = RunDescription(
        run_dir, resolved, name=hydra_job.job_name(), group=hydra_job.sweep_group(), resumed=resume is not None
    )
    for logger in built.loggers:
        logger.start(description)
