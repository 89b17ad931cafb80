"""metrics.jsonl and the console progress line: what every run leaves, whatever trackers are on.

`RunRecorder` is a TrainerCallback (callbacks.run_recorder): every Trainer log row becomes one JSON
line in metrics.jsonl and one readable console line. Only rank 0 writes. It observes and never
steers: the rows are the Trainer's log rows as they are.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sft_exp.atomic import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class RunRecorder(TrainerCallback):
    """A fresh run starts metrics.jsonl anew; a resumed run first drops the rows logged after the
    checkpoint it resumes from, so the file ends up as if training had never stopped."""

    def __init__(self, run_dir: str | Path, resume: Any = None):
        self.path = Path(run_dir) / METRICS_FILE
        self._t0 = None
        self._first_step = 0
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
                log.info(
                    "resumed at step %d: dropped %d metrics.jsonl rows logged after it", state.global_step, dropped
                )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{k: _json_safe(v) for k, v in logs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info(self.progress_line(row, state))

    def progress_line(self, row: dict, state) -> str:
        if "train_runtime" in row:  # transformers' end-of-training row
            return f"training done: {row['step']} steps in {_duration(row['train_runtime'])}"
        parts = ["before training" if state.max_steps == 0 else f"step {row['step']}/{state.max_steps}"]
        for key, label in (
            ("loss", "loss"),
            ("mean_token_accuracy", "acc"),
            ("entropy", "entropy"),
            ("eval_loss", "eval_loss"),
            ("eval_mean_token_accuracy", "eval_acc"),
        ):
            if isinstance(row.get(key), (int, float)):
                parts.append(f"{label} {row[key]:.4f}")
        # Task scores (eval_<task>/<metric>): every one, they are what the fine-tune is for.
        parts += [
            f"{key[len('eval_') :]} {format_score(key, value)}"
            for key, value in row.items()
            if key.startswith("eval_") and "/" in key and isinstance(value, (int, float))
        ]
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


def truncate_rows(path: Path, after_step: int) -> int:
    """Drop the rows logged after `after_step`, and end-of-training rows (the resumed run writes its own).

    Rewritten atomically; returns how many rows were dropped.
    """
    rows = read_jsonl(path)
    kept = [row for row in rows if row.get("step", 0) <= after_step and "train_runtime" not in row]
    if len(kept) < len(rows):
        write_jsonl(Path(path), kept)
    return len(rows) - len(kept)


def _json_safe(value: Any) -> Any:
    """JSON-safe scalars (NaN/inf become strings so the file stays valid JSON)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# Task metrics that count outputs (eval_<task>/truncated), printed as the whole numbers they are.
COUNT_METRICS = ("truncated",)


def format_score(key: str, value: float) -> str:
    return f"{int(value)}" if key.rsplit("/", 1)[-1] in COUNT_METRICS and float(value).is_integer() else f"{value:.4f}"
