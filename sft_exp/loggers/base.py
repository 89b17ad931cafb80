"""The logger interface: what train.run and the Trainer's log events call on every experiment tracker."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback

log = logging.getLogger(__name__)


@dataclass
class RunDescription:
    """What a tracker needs to know about the run it records."""

    run_dir: Path
    config: dict = field(default_factory=dict)  # the resolved config
    name: Optional[str] = None  # the job's overrides in a sweep
    group: Optional[str] = None  # the sweep folder in a sweep
    resumed: bool = False


class Logger(TrainerCallback):
    """One experiment tracker. Only rank 0 builds loggers (train.run), so none of these run elsewhere.

    train.run calls `start` before the first evaluation, `log_summary` and `finish` at the end (also
    when training fails); every Trainer log row reaches `log_metrics` through `on_log`. A tracker's
    failure is a warning, never the end of training: metrics.jsonl stays complete. Subclasses
    implement the `_start`, `_log`, `_summary` and `_finish` hooks; `log_metrics` gets JSON-safe scalars.
    """

    name = "logger"

    def __init__(self):
        self.active = False

    def start(self, run: RunDescription) -> None:
        self.active = self._guard("start", self._start, run) is not False

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.active:
            self._guard(f"log at step {step}", self._log, metrics, step)

    def log_summary(self, summary: dict) -> None:
        if self.active:
            self._guard("summary", self._summary, {k: v for k, v in summary.items() if is_number(v)})

    def finish(self, status: str) -> None:
        if self.active:
            self._guard("finish", self._finish, status)
        self.active = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.log_metrics({k: v for k, v in logs.items() if is_number(v)}, state.global_step)

    def _guard(self, what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            log.warning(
                "%s logger: %s failed (%s: %s); training goes on, metrics.jsonl is complete.",
                self.name,
                what,
                type(e).__name__,
                e,
            )
            return False

    # ------------------------------------------------------------------ for subclasses
    def _start(self, run: RunDescription) -> None:
        raise NotImplementedError

    def _log(self, metrics: dict, step: int) -> None:
        raise NotImplementedError

    def _summary(self, summary: dict) -> None:
        pass

    def _finish(self, status: str) -> None:
        pass


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
