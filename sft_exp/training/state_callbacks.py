"""Callbacks that own a piece of training state, so the trainer keeps no private bookkeeping of its own:

- `NonFiniteLossGuard`: trainer.nonfinite_loss (stop or skip a step whose loss is NaN/inf), decided from
  every rank's losses, so every rank stops or skips together.
- `EvaluationBeforeTraining`: the baseline evaluation, when it must wait for train() (DeepSpeed).
- `TokenCount`: the input tokens of every rank, and, with `LoggingWindow`, what a checkpoint must carry
  so that a resumed run logs the rows the straight run logs.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from sft_exp.errors import UserError
from sft_exp.run import distributed

log = logging.getLogger(__name__)

WINDOW_STATE_KEY = "sft_exp_train_window"  # in trainer_state.json's stateful_callbacks


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the step."""


class NonFiniteLossGuard(TrainerCallback):
    """`stop`: a NaN/inf loss stops the run naming the step (and the ranks); `skip`: that update is skipped."""

    def __init__(self, policy: str, accelerator, device):
        self.policy, self.accelerator, self.device = policy, accelerator, device
        self.in_step = False  # this rank saw a non-finite micro-batch loss since the last optimizer step
        self.skipped_steps = 0

    def record(self, loss: torch.Tensor) -> None:
        """Each micro-batch's loss (SFTTrainer.training_step); acted on before the optimizer step."""
        self.in_step = self.in_step or not bool(torch.isfinite(loss))

    def ranks_with_nonfinite_loss(self) -> list[int]:
        """The ranks whose loss was NaN/inf in this optimizer step. A collective: every rank calls it."""
        if self.accelerator.num_processes == 1:
            return [0] if self.in_step else []
        flags = torch.zeros(self.accelerator.num_processes, device=self.device)
        flags[self.accelerator.process_index] = float(self.in_step)
        flags = self.accelerator.reduce(flags, "sum")
        return [rank for rank, flag in enumerate(flags.tolist()) if flag]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        ranks = self.ranks_with_nonfinite_loss()  # one small all-reduce: all ranks decide alike
        self.in_step = False
        if not ranks:
            return
        step = state.global_step + 1
        where = f" on rank {', '.join(map(str, ranks))} of {args.world_size}" if args.world_size > 1 else ""
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at step {step}{where}. Lower optimizer.lr, check the "
                "data of that step, or set trainer.nonfinite_loss=skip to skip such steps."
            )
        # skip: optimizers skip parameters whose grad is None (no update, no moment change), on every rank.
        model.zero_grad(set_to_none=True)
        log.warning("step %d skipped: the loss was NaN or infinite%s", step, where)
        self.skipped_steps += 1


class TokenCount(TrainerCallback):
    """Input tokens of every rank: counted per micro-batch, summed across ranks at each log and checkpoint,
    and carried in the checkpoint (state.num_input_tokens_seen) so a resume continues the count."""

    def __init__(self, accelerator, device):
        self.accelerator, self.device = accelerator, device
        self.total = 0  # every rank's tokens up to the last sync
        self.since_sync = 0  # this rank's, since then

    def add(self, inputs) -> None:
        """A micro-batch's input tokens (or its shard's, split across ranks): not its padding."""
        mask = inputs.get("attention_mask")
        if mask is None and "source_ids" in inputs:  # padding-free: the padding is the one "example" of source -1
            mask = inputs["source_ids"] >= 0
        self.since_sync += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())

    def seen(self) -> int:
        """Every rank's input tokens so far. A collective under DDP: every rank must call it."""
        local = torch.tensor(self.since_sync, device=self.device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local, "sum")
        self.total += int(local.item())
        self.since_sync = 0
        return self.total

    def on_train_begin(self, args, state, control, **kwargs):
        self.total = int(state.num_input_tokens_seen or 0)  # a resume continues from the checkpoint's count


class LoggingWindow(TrainerCallback):
    """The training metrics not yet logged ride in each checkpoint, so a resume logs the straight run's rows.
    Also: the last step is always logged (as the first is, logging_first_step)."""

    def __init__(self, trainer):
        self.trainer = trainer  # its public `metrics["train"]`, `tokens` and `accelerator`

    def on_train_begin(self, args, state, control, **kwargs):
        distributed.check_gradients_are_averaged(self.trainer)
        # On resume the state was just loaded: continue the window it was in the middle of (rank 0 holds
        # every rank's sums; the others start empty).
        window = (state.stateful_callbacks or {}).get(WINDOW_STATE_KEY)
        if window and state.global_step > 0 and state.is_world_process_zero:
            self.trainer.metrics["train"].load_state(window)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.metrics["train"].end_step()
        if state.global_step >= state.max_steps:
            control.should_log = True
        if control.should_save:  # collectives: every rank decides should_save the same way
            state.num_input_tokens_seen = self.trainer.tokens.seen()
            window = self.trainer.metrics["train"]
            state.stateful_callbacks[WINDOW_STATE_KEY] = (
                {} if control.should_log else window.export_state(self.trainer.accelerator)
            )


class EvaluationBeforeTraining(TrainerCallback):
    """The baseline evaluation run at the start of train() when `pending` (SFTTrainer.evaluate_before_training:
    under DeepSpeed an evaluate() before train() would build an evaluation-only engine)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.pending = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.pending:
            self.pending = False
            self.trainer.metrics_before_training = self.trainer.evaluate()
