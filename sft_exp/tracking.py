"""What a run leaves behind while it trains: metrics.jsonl, a progress line, and W&B.

`RunRecorder` is a TrainerCallback: every Trainer log becomes one JSON line in metrics.jsonl,
one readable console line, and one W&B log call at the same step. Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class WandbLogger:
    """One W&B run per job, written under <run>/wandb. Offline unless an API key is configured.

    A W&B failure (no network, bad key) is a warning: training goes on and metrics.jsonl is complete.
    """

    def __init__(
        self, project: str = "sft_exp", entity: Optional[str] = None, group: Optional[str] = None,
        name: Optional[str] = None, tags: Sequence[str] = (), mode: Optional[str] = None,
    ):
        self.project, self.entity, self.group, self.name = project, entity, group, name
        self.tags = list(tags)
        self.mode = mode
        self.run = None

    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if _wandb_key_configured() else "offline"

    def start(self, run_dir: Path, config: dict, default_name: Optional[str] = None,
              default_group: Optional[str] = None, resume: bool = False) -> None:
        """Start the W&B run in <run_dir>/wandb. On resume, continue the W&B run this folder started."""
        id_file = Path(run_dir) / "wandb" / "sft_exp_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        try:
            import wandb

            id_file.parent.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.project, entity=self.entity, group=self.group or default_group,
                name=self.name or default_name, tags=self.tags or None, mode=self.resolved_mode(),
                dir=str(run_dir), config=config, reinit="finish_previous",
                id=run_id, resume="allow" if run_id else None,
            )
            id_file.write_text(self.run.id + "\n")
        except Exception as e:  # noqa: BLE001 - any W&B failure must not stop training
            log.warning("W&B could not start (%s: %s); training goes on, metrics.jsonl is complete.",
                        type(e).__name__, e)
            self.run = None

    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B log failed at step %d (%s); metrics.jsonl still has it.", step, e)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(values)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B summary failed (%s)", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B finish failed (%s)", e)
        self.run = None


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class RunRecorder(TrainerCallback):
    """metrics.jsonl + console progress + W&B, from the Trainer's log calls (rank 0 only).

    A fresh run starts metrics.jsonl anew; a resumed run first drops the rows logged after the
    checkpoint it resumes from, so the file ends up as if training had never stopped.
    """

    def __init__(self, run_dir: Path, logger: Optional[WandbLogger] = None, resume: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.logger = logger
        self._t0 = None
        self._last = None  # (time, num_tokens) at the previous train log
        if not resume and self.path.exists():
            log.warning("%s holds metrics of an earlier run in this folder; starting it anew", self.path)
            self.path.unlink()

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.monotonic()
        self._first_step = state.global_step
        if state.global_step > 0 and state.is_world_process_zero:  # resumed: the state is the checkpoint's
            dropped = truncate_rows(self.path, after_step=state.global_step)
            if dropped:
                log.info("resumed at step %d: dropped %d metrics.jsonl rows logged after it", state.global_step, dropped)

    def on_step_end(self, args, state, control, **kwargs):
        # A row at every checkpoint and at the last step: a resume then starts a fresh logging window exactly
        # where the straight run's rows split, so both write the same rows; and the final step is always logged.
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_loss" in logs:
            # Trainer averages over this train() call only; over the whole run it is the same with or without resumes.
            logs["train_loss"] = run_mean_loss(read_rows(self.path), logs["train_loss"])
        row = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        self.write(row)
        if self.logger is not None:
            self.logger.log({k: v for k, v in row.items() if k != "step"}, step=state.global_step)
        log.info(self.progress_line(row, state))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def progress_line(self, row: dict, state) -> str:
        if "train_runtime" in row:  # transformers' end-of-training row
            return f"training done: {row['step']} steps in {_duration(row['train_runtime'])}"
        if state.max_steps == 0:  # evaluate() before train() knows no step count yet
            parts = ["before training"]
        else:
            parts = [f"step {row['step']}/{state.max_steps}"]
        for key, label in (("loss", "loss"), ("mean_token_accuracy", "acc"), ("entropy", "entropy"),
                           ("eval_loss", "eval_loss"), ("eval_mean_token_accuracy", "eval_acc")):
            if isinstance(row.get(key), (int, float)):
                parts.append(f"{label} {row[key]:.4f}")
        now = time.monotonic()
        if "num_tokens" in row:
            if self._last is not None and now > self._last[0]:
                parts.append(f"{(row['num_tokens'] - self._last[1]) / (now - self._last[0]):,.0f} tok/s")
            self._last = (now, row["num_tokens"])
        if self._t0 is not None and state.max_steps and state.global_step > self._first_step:
            done = state.global_step - self._first_step
            left = (now - self._t0) / done * (state.max_steps - state.global_step)
            parts.append(f"eta {_duration(left)}")
        return " | ".join(parts)


def read_rows(path: Path) -> list:
    """The rows of a metrics.jsonl (empty when it does not exist)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_rows(path: Path, after_step: int) -> int:
    """Drop the rows logged after `after_step`, and end-of-training rows (the resumed run writes its own).

    Rewritten atomically; returns how many rows were dropped.
    """
    rows = read_rows(path)
    kept = [row for row in rows if row.get("step", 0) <= after_step and "train_runtime" not in row]
    if len(kept) < len(rows):
        tmp = Path(path).with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(path)
    return len(rows) - len(kept)


def run_mean_loss(rows: list, fallback: Any) -> Any:
    """Mean training loss over the whole run: each logged loss weighted by the steps it averages."""
    total, steps, previous = 0.0, 0, 0
    for row in rows:
        if isinstance(row.get("loss"), (int, float)) and "eval_loss" not in row:
            total += row["loss"] * (row["step"] - previous)
            steps += row["step"] - previous
            previous = row["step"]
    return total / steps if steps else fallback


def _plain(value: Any) -> Any:
    """JSON-safe scalars (NaN/inf become strings so the file stays valid JSON)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
