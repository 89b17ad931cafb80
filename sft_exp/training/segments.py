"""A run trained in segments (stopped, then resumed): its speed, time and mean loss are the whole run's.

Every checkpoint carries, in trainer_state.json's stateful_callbacks, the segments up to it: per process
that trained, the steps it contributed, their tokens, its training seconds and its wall seconds (the run's
own start included: data, model) up to the checkpoint the next one resumed from. A resumed run starts from
them, so:
- train_tokens_per_s is the whole run's tokens over its training time, each segment's tokens over that
  segment's time (not the whole run's tokens over the last segment's time);
- wall_time_s and train_runtime_s are the segments' sums.
Work a segment did after its last checkpoint is done again by the next and counted there; a segment killed
without warning (SIGKILL) counts up to its last checkpoint. The whole-run mean training loss
(`train_loss`) is read from the logged windows, which a resume restores (sft_exp.training.guards).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

SEGMENTS_STATE_KEY = "sft_exp_segments"  # in trainer_state.json's stateful_callbacks


class RunSegments(TrainerCallback):
    """The segments of a run, kept in each checkpoint (see the module's docstring)."""

    def __init__(self, run_started: Optional[float] = None):
        self.run_started = run_started  # time.monotonic() when this process's run began (before data and model)
        self.earlier: list = []  # the segments before this process's, as its checkpoint carried them
        self._began, self._from_step, self._tokens_from = None, 0, 0
        self.train_seconds: Optional[float] = None  # this segment's train() time, from its end-of-training row

    def on_train_begin(self, args, state, control, **kwargs):
        self._began = time.monotonic()
        self.run_started = self._began if self.run_started is None else self.run_started
        self._from_step, self._tokens_from = state.global_step, int(state.num_input_tokens_seen or 0)
        carried = (state.stateful_callbacks or {}).get(SEGMENTS_STATE_KEY) if state.global_step > 0 else None
        self.earlier = list(carried or [])

    def on_step_end(self, args, state, control, **kwargs):
        # The token count was just summed over the ranks for the checkpoint (state_callbacks.py).
        if control.should_save:
            state.stateful_callbacks[SEGMENTS_STATE_KEY] = [
                *self.earlier,
                self.this_segment(state.global_step, state.num_input_tokens_seen),
            ]

    def this_segment(self, step: int, tokens: int, train_seconds: Optional[float] = None) -> dict:
        now = time.monotonic()
        seconds = now - (self._began or now) if train_seconds is None else train_seconds
        return {
            "steps": [self._from_step, int(step)],
            "tokens": int(tokens or 0) - self._tokens_from,
            "train_runtime_s": round(seconds, 3),
            "wall_time_s": round(now - (self.run_started or now), 3),
        }

    def whole_wall_s(self) -> float:
        """The run's wall time so far: its earlier segments' and this process's since the run began."""
        now = time.monotonic()
        return sum(segment["wall_time_s"] for segment in self.earlier) + now - (self.run_started or now)

    def record_stop(self, checkpoint: Path) -> None:
        """A segment stopped by a signal ends just after its checkpoint: put its whole wall time (the save, the
        shutdown) into that checkpoint's record, which the next segment reads."""
        record_interrupted_wall(checkpoint, time.monotonic() - self.run_started)

    def earlier_train_s(self) -> float:
        return sum(segment["train_runtime_s"] for segment in self.earlier)

    def whole_run(self, step: int, tokens: int) -> dict:
        """summary.json's train_runtime_s and train_tokens_per_s over every segment, and the segments when
        there were several."""
        train_seconds = self.train_seconds if self.train_seconds is not None else time.monotonic() - self._began
        runtime = self.earlier_train_s() + train_seconds
        figures = {"train_runtime_s": runtime, "train_tokens_per_s": tokens / runtime if runtime else None}
        if self.earlier:
            figures["segments"] = [*self.earlier, self.this_segment(step, tokens, train_seconds)]
        return figures

    def whole_run_log(self, logs: dict, global_step: int) -> None:
        """The end-of-training log row's runtime and rates over every segment, not this process's alone."""
        runtime = self.train_seconds = logs.get("train_runtime")
        if not self.earlier or not runtime:
            return
        total = self.earlier_train_s() + runtime
        steps_here = max(global_step - self._from_step, 1)
        for key in ("train_samples_per_second", "train_steps_per_second"):
            if key in logs:  # this segment's rate -> per step -> the whole run's steps over its time
                logs[key] = round(logs[key] * runtime / steps_here * global_step / total, 3)
        logs["train_runtime"] = round(total, 4)


def record_interrupted_wall(checkpoint: Path, wall_time_s: float) -> None:
    """`wall_time_s` as the last segment's in the record `checkpoint` carries (trainer_state.json, rewritten whole)."""
    from transformers import TrainerState

    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return
    state = TrainerState.load_from_json(str(path))
    segments = (state.stateful_callbacks or {}).get(SEGMENTS_STATE_KEY)
    if segments:
        segments[-1]["wall_time_s"] = round(wall_time_s, 3)
        tmp = path.with_name(path.name + ".tmp")
        state.save_to_json(str(tmp))
        tmp.replace(path)
