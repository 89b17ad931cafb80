"""A run stopped by SIGTERM and resumed reports the whole run's figures: tokens/s over every segment (not the
whole run's tokens over the last segment's time), wall time summed over the segments, and the whole-run mean
training loss (not the last segment's), equal to a run that never stopped.

The runs are in this process, one after the other (a warm-up first), so the speeds compare: a straight run
before and after the stopped one bracket the machine's speed (the machine is shared: it drifts).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from sft_exp.errors import TrainingInterrupted
from tests.helpers import RESUME, compose

STEPS, STOP_AT = 120, 90  # stopped at 3/4: last-segment figures would be 4x off
RUN = [f"trainer.max_steps={STEPS}", "trainer.logging_steps=10", "trainer.save_steps=1000", "evals=none",
       "trainer.per_device_train_batch_size=8", "data.sources.0.max_samples=400", "data.sources.0.eval_max_samples=8",
       "data.max_length=64", "logger=none", "trainer.threads=1"]  # fmt: skip


def timed_run(run_dir, *overrides) -> float:
    """Seconds the run took, measured here; a run stopped by a signal ends with TrainingInterrupted."""
    from sft_exp.train import run

    cfg = compose([*RUN, f"run_dir={run_dir}", *overrides])
    start = time.monotonic()
    try:
        run(cfg)
    except TrainingInterrupted:
        pass
    return time.monotonic() - start


def stopped_by_sigterm(run_dir) -> float:
    """timed_run with a real SIGTERM raised during optimizer step STOP_AT (saved at its end, then stopped)."""
    from sft_exp.training.trainer import SFTTrainer

    real = SFTTrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == STOP_AT and not getattr(self, "signalled", False):
            self.signalled = True
            signal.raise_signal(signal.SIGTERM)
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SFTTrainer, "training_step", training_step)
        return timed_run(run_dir)


def stop_and_resume(root) -> tuple[dict, list]:
    """Straight runs before and after a run stopped at STOP_AT and resumed: (summaries, the two segments' walls)."""
    timed_run(root / "straight-before")
    walls = [stopped_by_sigterm(root / "stopped")]
    assert json.loads((root / "stopped" / "summary.json").read_text())["status"] == "interrupted"
    walls.append(timed_run(root / "stopped", RESUME))
    timed_run(root / "straight-after")
    return {name: json.loads((root / name / "summary.json").read_text())
            for name in ("straight-before", "stopped", "straight-after")}, walls  # fmt: skip


def test_a_resumed_run_reports_the_whole_runs_speed_time_and_loss(tmp_path):
    timed_run(tmp_path / "warm-up", "trainer.max_steps=3")
    for attempt in range(3):  # a shared machine's speed drifts: the figure must hold in one of three tries
        summaries, walls = stop_and_resume(tmp_path / str(attempt))
        resumed, straight = summaries["stopped"], summaries["straight-before"]
        speeds = [summaries[name]["train_tokens_per_s"] for name in ("straight-before", "straight-after")]
        if 0.9 * min(speeds) <= resumed["train_tokens_per_s"] <= 1.1 * max(speeds):
            break
    assert 0.9 * min(speeds) <= resumed["train_tokens_per_s"] <= 1.1 * max(speeds), (resumed, speeds)
    assert resumed["wall_time_s"] == pytest.approx(sum(walls), rel=0.1)
    segments = resumed["segments"]
    assert [s["steps"] for s in segments] == [[0, STOP_AT], [STOP_AT, STEPS]]
    assert sum(s["tokens"] for s in segments) == resumed["num_tokens"] == straight["num_tokens"]
    assert resumed["train_runtime_s"] == pytest.approx(sum(s["train_runtime_s"] for s in segments), abs=0.01)
    assert resumed["train_loss"] == straight["train_loss"]  # the whole run's mean, bitwise
    rows = [
        json.loads(line) for line in (tmp_path / str(attempt) / "stopped" / "metrics.jsonl").read_text().splitlines()
    ]
    final = next(row for row in reversed(rows) if "train_runtime" in row)  # metrics.jsonl says the same
    assert final["train_loss"] == resumed["train_loss"]
    assert final["train_runtime"] == pytest.approx(resumed["train_runtime_s"], rel=1e-3)
    assert resumed["last_window_steps"] == [STEPS - 9, STEPS] and "mean_token_accuracy" not in resumed
    assert resumed["eval_loss_before"] == straight["eval_loss_before"]  # the first segment's baseline
