"""Checkpoints that are either complete or ignored, and a clean stop on a signal.

- `AtomicCheckpoints` (a Trainer mixin): Trainer._save_checkpoint writes into
  `checkpoints/tmp-checkpoint-<step>/`; only a finished save is renamed to `checkpoint-<step>`.
- `latest_complete_checkpoint` / `resolve_resume`: what `resume_from_checkpoint` means;
  partial or corrupt checkpoints are skipped with a warning naming them.
- `StopOnSignal` (a TrainerCallback, callbacks.stop_on_signal): a preempted job (SIGTERM, or SLURM's
  USR2 before preemption or the time limit) or Ctrl-C (SIGINT) saves a checkpoint at the next step
  boundary, stops training and raises `TrainingInterrupted` when training ends, which the CLI turns
  into exit status 128 + the signal (in a submitit job: a requeue, after the save).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback

# TrainingInterrupted lives in sft_exp.errors so the CLI can catch it without importing transformers.
from sft_exp.errors import ConfigError, TrainingInterrupted
from sft_exp.run.distributed import requeued_job
from sft_exp.run.hydra_job import resume_command

log = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = "tmp-checkpoint-"  # does not match transformers' `checkpoint-*` glob, so rotation ignores it
STATE_FILE = "trainer_state.json"  # Trainer._save_checkpoint writes it last


# ----------------------------------------------------------------------------- atomic save
class AtomicCheckpoints:
    """Mixin for transformers.Trainer: a checkpoint folder appears only once every file is written."""

    _staging_root: Optional[str] = None

    def _get_output_dir(self, trial):
        # While a checkpoint is being written, Trainer._save_checkpoint writes under the staging folder.
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        root = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = root / f"{STAGING_PREFIX}{self.state.global_step}"
        self._staging_root = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state into staging
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best and best.startswith(str(staging)):  # Trainer recorded the staging path: point it at the final one
                self.state.best_model_checkpoint = str(root / Path(best).name)
                self.state.save_to_json(str(staging / name / STATE_FILE))
            from sft_exp.models.stop_tokens import save_generation_config

            save_generation_config(self.model, staging / name)  # an adapter checkpoint's stops too
            publish(staging / name, root / name)
            staging.rmdir()
            # Rotation goes by mtime as Trainer's does (after resuming from an older checkpoint, newest wins).
            rotate_checkpoints(
                output_dir=str(root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


class SavesAsAsked(TrainerCallback):
    """Checkpoints only where the settings ask for them: transformers' DefaultFlowCallback also saves one at
    the last step whenever save_strategy is "steps" (a full copy of the weights and the optimizer state, twice
    the model's size for AdamW), although the run saves its final weights to model/ anyway. That save is
    kept when save_steps falls on the last step or trainer.save_final_checkpoint is true. Placed before
    StopOnSignal, whose save at a signal it never undoes."""

    def on_step_end(self, args, state, control, **kwargs):
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        scheduled = args.save_strategy == "steps" and state.save_steps > 0 and state.global_step % state.save_steps == 0
        if last and control.should_save and not scheduled and not getattr(args, "save_final_checkpoint", False):
            control.should_save = False
        return control


def publish(staged: Path, final: Path) -> None:
    """Rename a finished checkpoint into place; an older one with the same step is replaced."""
    replaced = None
    if final.exists():  # resumed from an earlier checkpoint and reached this step again
        replaced = final.with_name(f"{STAGING_PREFIX}replaced-{final.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staged, final)
    os.utime(final)  # its mtime is when it was completed, which is what rotation sorts by
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


# ----------------------------------------------------------------------------- finding one to resume
def checkpoint_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be resumed from, or None when it is a complete checkpoint."""
    if path.name.startswith(STAGING_PREFIX):
        return "an unfinished save (the job stopped while writing it)"
    state_file = path / STATE_FILE
    if not state_file.is_file():
        return f"no {STATE_FILE} (the save did not finish)"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    match = CHECKPOINT.match(path.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"{STATE_FILE} says step {state.get('global_step')}, the folder name says {match.group(1)}"
    return None


def latest_complete_checkpoint(checkpoints_dir: Path) -> Optional[Path]:
    """The highest-step complete checkpoint; partial or corrupt ones are skipped with a warning naming them."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in sorted(checkpoints_dir.iterdir()):
        if not path.is_dir() or not (CHECKPOINT.match(path.name) or path.name.startswith(STAGING_PREFIX)):
            continue
        problem = checkpoint_problem(path)
        if problem:
            log.warning("skipping checkpoint %s: %s", path, problem)
        else:
            candidates.append((int(CHECKPOINT.match(path.name).group(1)), path))
    return max(candidates)[1] if candidates else None


def resolve_resume(value: Any, run_dir: Path) -> Optional[str]:
    """resume_from_checkpoint -> a checkpoint folder to resume from, or None for a fresh start.

    true: the latest complete checkpoint of this run folder. A path: a checkpoint folder, or a run
    folder / checkpoints folder whose latest complete checkpoint is used. Unset (null) in a SLURM job
    that was requeued (preempted or past its time limit): the latest complete checkpoint of its run
    folder if there is one, so a requeued job continues by itself; false always starts afresh.
    """
    if value is None and requeued_job():
        found = latest_complete_checkpoint(run_dir / "checkpoints")
        if found is not None:
            log.warning(
                "this SLURM job was requeued (SLURM_RESTART_COUNT=%s): resuming from %s",
                os.environ["SLURM_RESTART_COUNT"],
                found,
            )
            return str(found)
        return None
    if value is None or value is False:
        return None
    if value is True:
        found = latest_complete_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise ConfigError(
                f"resume_from_checkpoint=true, but the run folder {run_dir} has no complete checkpoint "
                f"in {run_dir / 'checkpoints'}. To continue an earlier run, point Hydra at its folder: "
                "hydra.run.dir=<that run folder> (e.g. outputs/runs/2026-11-22/19-04-11); or give a checkpoint: "
                "resume_from_checkpoint=<run folder>/checkpoints/checkpoint-<step>."
            )
        return str(found)
    return _resolve_path(Path(os.path.expanduser(str(value))))


def finished_at(checkpoint: Optional[str], max_steps: Optional[int]) -> Optional[int]:
    """The step of a checkpoint already at trainer.max_steps (nothing left to train), else None.

    transformers resumes from such a checkpoint by training one step past max_steps, so train.run does not
    hand it over: a complete run stays as it is, and anything else is a clear error."""
    if not checkpoint or not max_steps or max_steps <= 0:
        return None  # an epoch-based run (max_steps -1): transformers counts its steps itself
    state = Path(checkpoint) / "trainer_state.json"
    try:
        step = int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return None
    return step if step >= max_steps else None


def _resolve_path(path: Path) -> str:
    key = f"resume_from_checkpoint={path}"
    if not path.is_dir():
        raise ConfigError(
            f"{key}: no such folder. Give a checkpoint folder (…/checkpoints/checkpoint-<step>), "
            "a run folder, or true for the latest checkpoint of this run folder."
        )
    if CHECKPOINT.match(path.name) or path.name.startswith(STAGING_PREFIX):
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"{key}: cannot resume from it: {problem}. Pick an earlier checkpoint beside it.")
        return str(path)
    for folder in (path / "checkpoints", path):
        found = latest_complete_checkpoint(folder)
        if found is not None:
            return str(found)
    raise ConfigError(f"{key}: no complete checkpoint-<step> folder in it or in its checkpoints/ folder.")


# ----------------------------------------------------------------------------- preemption
def preemption_signal() -> signal.Signals:
    """The signal a SLURM job gets before preemption or its time limit: submitit's (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL names another), which sbatch's --signal asks SLURM to send."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT/the preemption signal during training: save at the end of the current step, then stop.

    A second signal restores the previous handlers and re-delivers it (stop now, no checkpoint), except
    the SIGTERM SLURM sends right after its preemption signal: that is the same stop, not a second one.
    The preemption signal's previous handler, when Python's (submitit's: requeue the job), is handed on
    with `TrainingInterrupted.then` and called once the checkpoint is saved, so the requeued job resumes
    from the step the signal came in (calling it at once would exit mid-step, losing every step since the
    last scheduled save). Handlers are installed only while training runs, and only from the main thread.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}
        self.preemption = preemption_signal()
        self.signals = (signal.SIGTERM, signal.SIGINT, self.preemption)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}

    def on_train_end(self, args, state, control, **kwargs):
        then = self._previous.get(self.received)
        self.restore()
        if self.received is not None:  # the checkpoint of the stop step is saved: end the run here
            handoff = then if self.received == self.preemption and callable(then) else None
            run_dir = Path(args.output_dir).parent
            raise TrainingInterrupted(
                self.received, state.global_step, run_dir, then=handoff, command=resume_command(run_dir)
            )

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received == self.preemption and signum == signal.SIGTERM:
            log.warning("SIGTERM received: already saving a checkpoint at the end of this step")
            return
        if self.received is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received(args.device):
            control.should_save = control.should_training_stop = True
        return control

    def _any_rank_received(self, device) -> bool:
        """Ranks get the signal at slightly different steps; all must stop at the same one or the save hangs."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else self.received], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = int(flag.item())
        return bool(flag.item())
