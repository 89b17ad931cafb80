"""Rerunning the same command continues the study: a sweep killed during trial 3 of 6 and rerun ends with
exactly 6 completed trials; the interrupted trial is failed and its parameters run again; no folder is
written twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.sweeps.helpers import TEST_ENV, TINY, job_folders, sweep, trials

SIX = ["hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.type=random", "hydra.sweeper.sampler.seed=7"]


def start_sweep(sweep_dir):
    command = [sys.executable, "-m", "sft_exp", "-m", "--config-dir", str(REPO / "sweeps"), "--config-name",
               "optuna_lr", *TINY, *SIX, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(command, cwd=REPO, env=TEST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


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

    job = sweep(tmp_path, *SIX)  # the same command again
    assert job.returncode == 0, job.stderr[-3000:]
    study = trials(tmp_path)
    complete = [t.number for t in study if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and complete == [0, 1, 3, 4, 5, 6]
    interrupted = study[2]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["sft_exp_interrupted"]
    assert study[3].params == interrupted.params and study[3].user_attrs["sft_exp_rerun_of"] == 2
    drawn = [tuple(sorted(t.params.items())) for t in study if t.number != 3]
    assert len(set(drawn)) == len(drawn)  # the rerun's sampler draws new values, not the first run's again
    assert job_folders(tmp_path) == [0, 1, 2, 3, 4, 5, 6]  # one folder per trial number
    assert {p: p.stat().st_mtime_ns for p in written} == written  # the first run's files untouched
    for number in complete:
        assert (tmp_path / str(number) / "summary.json").is_file()
