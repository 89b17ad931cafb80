"""SFTTrainer: transformers.Trainer with sft_exp's loss, metrics and memory strategy.

Like TRL's SFTTrainer we subclass transformers.Trainer and override only `compute_loss`,
`training_step` and `log` (plus `create_optimizer`, to take the optimizer from config).
Gradient accumulation, checkpoints, resume, schedulers, mixed precision and DDP/FSDP/DeepSpeed
are transformers' and accelerate's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

from sft_exp.compat import set_loss_shifts_labels
from sft_exp.errors import ConfigError
from sft_exp.evaluation.evaluator import Evaluator
from sft_exp.loggers.base import Logger
from sft_exp.run import distributed, sequence_parallel
from sft_exp.run.scores import whole_run_loss
from sft_exp.training.checkpoints import AtomicCheckpoints, SavesAsAsked
from sft_exp.training.choices import check_trainer_choices
from sft_exp.training.forward import sft_forward, weighted_count
from sft_exp.training.ledger import ExampleLedger, ledger_path
from sft_exp.training.metrics import SFTMetrics
from sft_exp.training.segments import RunSegments
from sft_exp.training.state_callbacks import (  # noqa: F401 (NonFiniteLossError: re-exported)
    EvaluationBeforeTraining,
    LoggingWindow,
    NonFiniteLossError,
    NonFiniteLossGuard,
    TokenCount,
)

log = logging.getLogger(__name__)


@dataclass
class SFTTrainingArguments(TrainingArguments):
    # stop: a NaN/inf loss stops the run naming the step; skip: that optimizer step is skipped.
    nonfinite_loss: str = field(default="stop")
    # Router load-balancing loss coefficient for MoE models (None: the model config's own).
    router_aux_loss_coef: Optional[float] = field(default=None)
    # CPU threads for torch. None: the CPUs this process may use minus those busy at start (at least 1),
    # waiting passively (sft_exp.system): a busy core then costs a share, not the whole run.
    threads: Optional[int] = field(default=None)
    # Write <run>/examples.parquet: each example's loss and token accuracy per epoch and evaluation step
    # (data maps). Off by default: it costs a little every step (the README has the figures).
    example_ledger: bool = field(default=False)
    # Also keep a checkpoint (weights, optimizer and scheduler state: to train on later) at the last step when
    # save_steps does not fall on it. Off: the final weights are the run's model/ folder, and the checkpoints
    # are the ones save_strategy / save_steps asked for (transformers would add one at the end).
    save_final_checkpoint: bool = field(default=False)

    def __post_init__(self):
        check_trainer_choices(nonfinite_loss=self.nonfinite_loss)
        super().__post_init__()


def cpu_has_fast(precision: str) -> bool:
    """Whether this CPU multiplies `precision` matrices in hardware (Linux /proc/cpuinfo flags).

    Measured on an AMD EPYC with avx512_bf16: a bf16 matmul runs 2.3x the fp32 rate.
    """
    wanted = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[precision]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in wanted)


def precision_flags(precision: str) -> dict:
    """Map trainer.precision to TrainingArguments flags: bf16 on CUDA by default, fp32 on CPU.

    bf16 without a GPU that has it trains on the CPU, and transformers must be told so (`use_cpu`): it
    refuses bf16 otherwise ("Your setup doesn't support bf16/gpu"). A GPU without bf16 is refused by name.
    """
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    check_trainer_choices(precision=precision)
    if precision == "auto":
        precision = "bf16" if is_torch_bf16_gpu_available() and torch.cuda.is_available() else "fp32"
    flags = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if precision == "bf16" and not (is_torch_bf16_gpu_available() or is_torch_xla_available()):
        if torch.cuda.is_available():
            raise ConfigError(
                f"trainer.precision=bf16: {torch.cuda.get_device_name(0)} has no bfloat16 (Ampere "
                "and newer GPUs have it); use trainer.precision=fp16 or fp32."
            )
        flags["use_cpu"] = True
    if precision in ("bf16", "fp16") and not torch.cuda.is_available() and not cpu_has_fast(precision):
        log.warning(
            "trainer.precision=%s on CPU: this CPU has no %s matrix instructions (AVX512-BF16/AMX), so autocast "
            "to %s is likely slower than fp32; trainer.precision=fp32 is the CPU default.",
            precision,
            precision,
            precision,
        )
    return flags


def build_training_arguments(
    output_dir: str,
    precision: str = "auto",
    extra_args: Optional[dict] = None,
    eval_steps: Optional[int] = None,
    eval_strategy: Optional[str] = None,
    **kwargs: Any,
) -> SFTTrainingArguments:
    """SFTTrainingArguments from the flat `trainer.*` config: sft_exp's defaults, then the user's."""
    defaults = dict(
        report_to=[],  # the loggers and the run recorder are callbacks (sft_exp.loggers, sft_exp.run.recorder)
        disable_tqdm=True,  # one readable progress line per logging step instead
        logging_first_step=True,
        prediction_loss_only=True,
        remove_unused_columns=False,
        save_strategy="steps",
        eval_strategy=eval_strategy or ("steps" if eval_steps else "no"),
        eval_steps=eval_steps or None,
        average_tokens_across_devices=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="no",
    )
    defaults.update(precision_flags(precision))
    defaults.update(kwargs)
    defaults.update(extra_args or {})
    return SFTTrainingArguments(output_dir=output_dir, **defaults)


class SFTTrainer(AtomicCheckpoints, Trainer):
    """transformers.Trainer for SFT.

    Build it like TRL's: `SFTTrainer(model=..., train_dataset=..., data_collator=..., loss=NLLLoss(),
    max_steps=100, per_device_train_batch_size=8, ...)`: keyword arguments that are not the
    Trainer's own become SFTTrainingArguments (or pass `args=` yourself).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: Optional[TrainingArguments] = None,
        *,
        loss: Optional[Callable] = None,
        memory: Any = None,
        optimizer_factory: Optional[Callable[..., torch.optim.Optimizer]] = None,
        source_names: Sequence[str] = ("data",),
        evaluators: Sequence[Any] = (),
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks: Optional[list] = None,
        output_dir: str = "sft_exp_output",
        run_started: Optional[float] = None,
        **training_arguments: Any,
    ):
        from sft_exp.training.losses import NLLLoss
        from sft_exp.training.memory import NoMemoryStrategy

        if args is None:
            args = build_training_arguments(output_dir=output_dir, **training_arguments)
        elif training_arguments:
            raise TypeError(f"pass either args= or training-argument keywords, not both: {sorted(training_arguments)}")
        sequence_parallel.ready_engine(args, model)  # Ulysses: the model's attention, DeepSpeed's comm on CPU
        self.loss_fn = loss if loss is not None else NLLLoss()
        self.memory = memory if memory is not None else NoMemoryStrategy()
        self.optimizer_factory = optimizer_factory
        self.source_names = list(source_names)
        self.evaluators = list(evaluators)  # sft_exp.evaluation.Evaluator: scored whenever the trainer evaluates
        misplaced = [type(cb).__name__ for cb in callbacks or [] if isinstance(cb, Evaluator)]
        if misplaced:
            raise TypeError(f"{misplaced[0]} is an evaluator, not a TrainerCallback: pass it as evaluators=[...]")
        eval_strategy = args.eval_strategy
        if eval_dataset is None and eval_strategy != "no":
            # Task evaluation needs no eval set, but the Trainer refuses eval_steps without one: let it
            # check the rest, then restore the strategy (our evaluate() scores the tasks alone).
            if not evaluators:
                raise ConfigError(
                    f"trainer.eval_steps={args.eval_steps} but there is nothing to evaluate: no held-out rows "
                    "(data.eval_split_size, a source's eval_path, data.eval_sources) and no task in `evals`."
                )
            args.eval_strategy = "no"
        # report_to names the trackers; those an sft_exp logger among the callbacks records are not added twice.
        reporting = args.report_to
        covered = {cb.name for cb in callbacks or [] if isinstance(cb, Logger)}
        args.report_to = [name for name in reporting or [] if name not in covered]
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class,
            callbacks=[SavesAsAsked(), *(callbacks or [])],  # before StopOnSignal, which may ask for a save
        )  # fmt: skip
        args.eval_strategy, args.report_to = eval_strategy, reporting
        # Our loss is normalized by the supervised tokens of the whole accumulated batch (num_items_in_batch),
        # so the Trainer must count them and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        set_loss_shifts_labels(self)
        self.metrics = {mode: SFTMetrics(len(self.source_names)) for mode in ("train", "eval")}
        # The state these keep is theirs (sft_exp.training.state_callbacks), not private fields of the trainer.
        self.tokens = TokenCount(self.accelerator, args.device)
        self.nonfinite = NonFiniteLossGuard(args.nonfinite_loss, self.accelerator, args.device)
        self.baseline = EvaluationBeforeTraining(self)
        self.metrics_before_training: dict = {}  # evaluate_before_training's result
        # trainer.example_ledger: each example's loss and accuracy, written at every evaluation and at the end.
        self.ledger = (
            ExampleLedger(ledger_path(args.output_dir), self.source_names, self.accelerator)
            if args.example_ledger
            else None
        )
        # A resumed run's speed, times and mean loss over all its segments (`run_started`: time.monotonic() when
        # the run began, for its wall time).
        self.segments = RunSegments(run_started)
        for callback in (self.tokens, self.nonfinite, LoggingWindow(self), self.segments, self.baseline, self.ledger):
            if callback is not None:
                self.add_callback(callback)
        self.remove_callback(PrinterCallback)  # sft_exp.run.recorder prints one readable line per log instead

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if distributed.shard_on_cpu(self.accelerator, self.args):  # accelerate would run DDP on CPU processes
            self.is_fsdp_enabled = True

    def evaluate_before_training(self) -> None:
        """The baseline evaluation, kept in `metrics_before_training`.

        Under DeepSpeed it runs at the start of train(), in the training engine: an evaluate() before
        train() makes transformers build an evaluation-only engine, which ZeRO-1/2 refuse ("ZeRO inference
        only makes sense with ZeRO Stage 3") and which train() keeps, with no optimizer to step.
        """
        if self.is_deepspeed_enabled:
            self.baseline.pending = True
        else:
            self.metrics_before_training = self.evaluate()

    def train(self, *args, **kwargs):
        distributed.forget_evaluation_only_preparation(self)  # an evaluate() before must not cost the DDP wrapper
        return super().train(*args, **kwargs)

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        """The optimizer comes from config (`optimizer=` group, a partial); param groups as Trainer builds them."""
        if self.optimizer_factory is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay]},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        self.optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        return self.optimizer

    # ------------------------------------------------------------------ loss and metrics
    def _issue_warnings_after_load(self, load_result) -> None:
        """A tied head is not saved (it is the embedding), so its key is missing from every checkpoint: tie it
        and say nothing (transformers warns "missing keys ... ['lm_head.weight']" on an exact resume)."""
        tied = tuple(getattr(self.accelerator.unwrap_model(self.model), "all_tied_weights_keys", None) or ())
        missing = (
            [key for key in load_result.missing_keys if not key.endswith(tied)] if tied else load_result.missing_keys
        )
        if len(missing) < len(load_result.missing_keys):
            self.accelerator.unwrap_model(self.model).tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def compute_loss_context_manager(self):
        """The memory strategy (e.g. activation offloading hooks) wraps every forward pass.

        Autocast too: accelerate autocasts only model.forward, and the chunked head runs after it.
        """
        stack = super().compute_loss_context_manager()
        stack.enter_context(self.accelerator.autocast())
        if self.model.training:
            stack.enter_context(self.memory.forward_context())
        return stack

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The wrapped module's flag: DeepSpeedEngine.eval() switches its module, not the engine's own `training`.
        mode = "train" if self.accelerator.unwrap_model(model).training else "eval"
        # num_items_in_batch counts every rank's tokens and DDP averages gradients across ranks: scale the
        # token loss up by the number of processes (in training: the ranks the engine averages gradients over,
        # sequence_parallel.loss_scale; in evaluation the Trainer averages the ranks' losses). The MoE router loss
        # is a per-micro-batch mean: scale it so that it is averaged over the accumulation steps and not
        # multiplied by the process count (as TRL).
        ranks = (
            1 if num_items_in_batch is None else self.loss_scale if mode == "train" else self.accelerator.num_processes
        )
        steps = self.current_gradient_accumulation_steps if (mode == "train" and num_items_in_batch is not None) else 1
        out = sft_forward(
            model,
            inputs,
            self.loss_fn,
            num_items_in_batch=num_items_in_batch,
            num_sources=len(self.source_names),
            router_aux_loss_coef=self._router_aux_loss_coef(model) / (ranks * steps),
            per_example=self.ledger is not None,
        )
        if out.examples is not None:
            epoch = int(self.state.epoch or 0) if mode == "train" else None
            self.ledger.add(out.examples, mode, epoch, self.state.global_step)
        if mode == "train":
            self.tokens.add(inputs)
        self.metrics[mode].add(out)
        loss = out.loss * ranks
        return (loss, {}) if return_outputs else loss  # prediction_loss_only: no logits kept

    @property
    def loss_scale(self) -> int:
        """What a training loss over every rank's tokens is multiplied by for the gradient mean (the process count,
        or the data-parallel groups where DeepSpeed sums a Ulysses group's gradients)."""
        return sequence_parallel.loss_scale(self)

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """The Trainer's count of supervised tokens; with per-message loss weights their sum; under sequence
        parallelism ours (the Trainer counts nothing of Ulysses' shards, and a ring group's batch once per rank)."""
        count = super()._get_num_items_in_batch(batch_samples, device)
        split = sequence_parallel.engine(self.accelerator) is not None
        if not batch_samples or (not split and (count is None or "loss_weights" not in batch_samples[0])):
            return count
        weighted = sum(weighted_count(batch) for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            weighted = self.accelerator.gather(weighted).sum()  # every rank takes part, as the Trainer's own count
        return sequence_parallel.counted_once(weighted, self.accelerator)

    def _prepare_context_parallel_inputs(self, model, inputs):
        """Ring: torch shards the batch's per-token tensors in place as a step starts; the Trainer names its own
        (input_ids, labels, masks, positions), and ours (source ids, loss weights, shifted targets) go with them.
        (A private Trainer method: tests/test_compat.py checks it.)"""
        context, inputs = super()._prepare_context_parallel_inputs(model, inputs)
        if sequence_parallel.engine(self.accelerator) == "ring":
            context = sequence_parallel.ring_context(self.accelerator, inputs)
        return context, inputs

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A resume skips the batches already trained; Ulysses' micro-batches are split batches of its loader's."""
        if sequence_parallel.engine(self.accelerator) == "ulysses":
            return sequence_parallel.resumed_dataloader(dataloader, num_batches, super().get_resumed_dataloader)
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _router_aux_loss_coef(self, model) -> float:
        if self.args.router_aux_loss_coef is not None:
            return self.args.router_aux_loss_coef
        config = self.accelerator.unwrap_model(model).config
        return float(
            getattr(config.get_text_config(), "router_aux_loss_coef", 0.0) or 0.0
        )  # prediction_loss_only: no logits kept

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.loss_scale != self.accelerator.num_processes:
            loss = loss * (self.accelerator.num_processes / self.loss_scale)  # reported as DDP's: ranks' mean = loss
        self.metrics["train"].add_loss(loss)
        self.nonfinite.record(loss)  # acted on before the optimizer step, jointly with the other ranks
        return loss

    def log(self, logs: dict, start_time: Optional[float] = None) -> None:
        if any(k.startswith("eval_") for k in logs):
            metrics = self.metrics["eval"].compute_and_reset(self.accelerator, self.source_names)
            logs.update({f"eval_{k}": v for k, v in metrics.items()})
            logs.update(self._task_metrics())
        else:
            if "loss" in logs:  # the Trainer's mean step loss, over the window as a resume keeps it
                logs["loss"] = self.metrics["train"].window_loss(self.accelerator)
            logs.update(self.metrics["train"].compute_and_reset(self.accelerator, self.source_names))
            logs["num_tokens"] = self.num_tokens_seen()
            if "train_loss" in logs:  # the end-of-training row: the whole run's figures, whatever stopped it
                logs["train_loss"] = whole_run_loss(self.state.log_history)
                self.segments.whole_run_log(logs, self.state.global_step)
            if self.nonfinite.skipped_steps:
                logs["skipped_steps"] = self.nonfinite.skipped_steps
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Eval loss and metrics on the eval set (when there is one) and every evaluator's scores.

        Under Ulysses each rank evaluates whole rows (no gradients, so no split needed) with the model's own attention.
        """
        with sequence_parallel.unsplit_attention(self.accelerator.unwrap_model(self.model)):
            return self._evaluate_sets_and_tasks(eval_dataset, ignore_keys, metric_key_prefix)

    def _evaluate_sets_and_tasks(self, eval_dataset, ignore_keys, metric_key_prefix: str) -> dict:
        if eval_dataset is not None or self.eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = self._task_metrics()  # no eval set: the task scores alone
        if metrics:
            super().log(metrics)
        return metrics

    def _task_metrics(self) -> dict:
        """Scores of every evaluator (sft_exp.evaluation.TaskEvaluation or yours).

        Every rank takes part (prompts are split across ranks). The evaluation after the last step is
        `final` (it prints a few examples), whether the Trainer's eval_steps or train.run asked for it.
        """
        scores = {}
        final = 0 < self.state.max_steps <= self.state.global_step
        for evaluator in self.evaluators:
            scores.update(
                evaluator.evaluate(
                    self.model,
                    self.processing_class,
                    step=self.state.global_step,
                    final=final,
                    accelerator=self.accelerator,
                )
            )
        return scores

    def num_tokens_seen(self) -> int:
        """Input tokens of every rank so far. A collective under DDP: every rank must call it."""
        return self.tokens.seen()
