"""Rerunning the same command continues the study: a sweep killed during trial 3 of 6 and rerun ends with
exactly 6 completed trials, numbers and folders 0-5; the interrupted trial is taken over and run again under
its own number and folder; the other folders are written once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import REPO
from tests.sweeps.helpers import TEST_ENV, TINY, job_folders, sweep, sweep_command, trials

SIX = ["hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.type=random", "hydra.sweeper.sampler.seed=7"]


def start_sweep(sweep_dir):
    command = sweep_command(*TINY, *SIX, f"hydra.sweep.dir={sweep_dir}")
    return subprocess.Popen(
        command, cwd=REPO, env=TEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def test_a_sweep_killed_during_trial_3_resumes_to_exactly_6_completed_trials(tmp_path):
    proc = start_sweep(tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "2" / "run_info.json").is_file():  # trial 3 of 6 has started
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before trial 3"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweeper dies without a word: its trial stays RUNNING
        proc.wait()
    assert [t.state.name for t in trials(tmp_path)] == ["COMPLETE", "COMPLETE", "RUNNING"]
    written = {p: p.stat().st_mtime_ns for p in tmp_path.glob("[0-9]*/*") if p.is_file()}

    first_params = trials(tmp_path)[2].params

    job = sweep(tmp_path, *SIX)  # the same command again
    assert job.returncode == 0, job.stderr[-3000:]
    assert "trial 2 was interrupted (its sweeper is gone): this sweeper runs it again" in job.stdout + job.stderr
    study = trials(tmp_path)
    assert [t.state.name for t in study] == ["COMPLETE"] * 6  # exactly 6 trials, all completed
    assert study[2].params == first_params  # the interrupted trial ran again with its own parameters
    drawn = [tuple(sorted(t.params.items())) for t in study]
    assert len(set(drawn)) == len(drawn)  # the rerun's sampler draws new values, not the first run's again
    assert job_folders(tmp_path) == [0, 1, 2, 3, 4, 5]  # one folder per trial number
    before_trial_2 = {p: m for p, m in written.items() if p.parent.name in ("0", "1")}
    assert {p: p.stat().st_mtime_ns for p in before_trial_2} == before_trial_2  # completed trials untouched
    for number in range(6):
        assert (tmp_path / str(number) / "summary.json").is_file()


@pytest.mark.slow  # 45 s; the suite is at its 10-minute budget (python -m pytest -m slow runs it)
def test_a_stopped_sweep_continues_its_trial_from_the_checkpoint_the_signal_saved(tmp_path):
    """SIGTERM to a sweep (a SLURM preemption, a Ctrl-C): the job saves a checkpoint at the end of that step; the
    same command again runs that trial on from it, under its own number, in its own folder."""
    import json

    one = ["hydra.sweeper.n_trials=1", "trainer.max_steps=400", "trainer.save_steps=1000"]
    command = sweep_command(*TINY, *one, f"hydra.sweep.dir={tmp_path}")
    log_file = open(tmp_path.parent / f"{tmp_path.name}.log", "w")
    proc = subprocess.Popen(
        command, cwd=REPO, env=TEST_ENV, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    metrics = tmp_path / "0" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before step 3"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log_file.close()
    stopped = (tmp_path.parent / f"{tmp_path.name}.log").read_text()
    # One resume command, the sweeper's (the job's own would run a job, not the sweep).
    assert "the sweep says how to resume it" in stopped and "Resume with" not in stopped, stopped[-3000:]
    assert "will run again, from their last checkpoint, when the same command runs again" in stopped
    saved = sorted((tmp_path / "0" / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1, "the signal saves one checkpoint"
    at_step = int(saved[0].name.split("-")[1])
    assert [t.state.name for t in trials(tmp_path)] == ["RUNNING"]
    first_row = metrics.read_text().splitlines()[0]  # the step-0 evaluation, with its own eval_runtime

    job = sweep(tmp_path, *one)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-3000:]
    assert (
        "trial 0 was interrupted (its sweeper is gone): this sweeper runs it again, from its last checkpoint" in output
    )
    assert [t.state.name for t in trials(tmp_path)] == ["COMPLETE"] and job_folders(tmp_path) == [0]
    resolved = (tmp_path / "0" / "resolved_config.yaml").read_text()
    assert f"resume_from_checkpoint: {tmp_path / '0'}" in resolved  # the sweeper resumed the job from its folder
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 401))  # one row per step
    assert metrics.read_text().splitlines()[0] == first_row  # kept, not rewritten by a run started afresh
    assert at_step > 1
    assert json.loads((tmp_path / "0" / "summary.json").read_text())["global_step"] == 400
