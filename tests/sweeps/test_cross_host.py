"""A sweeper on another host shares the study: while it runs, its heartbeat keeps its trial its own; once it
dies (no heartbeat for hydra.sweeper.stale_after_s), a sweeper here takes the trial over and runs it.

The other host is real as far as the sweeper can tell: a process in its own UTS namespace (`unshare -u`),
with its own hostname, so its pid means nothing here and only the heartbeat can tell it is alive."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time

import pytest

from tests.helpers import REPO, tiny_run
from tests.sweeps.helpers import TEST_ENV, sweep, sweep_command, trials

pytestmark = pytest.mark.multiprocess

STALE = ["hydra.sweeper.stale_after_s=10", "hydra.sweeper.sampler.type=random", "hydra.sweeper.sampler.seed=3"]
OTHER_HOST = "sft-exp-node-a"


def _can_fake_a_host() -> bool:
    try:
        return (
            subprocess.run(["unshare", "-u", "hostname", OTHER_HOST], capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _sweeper_on_another_host(sweep_dir):
    """A sweeper whose one trial trains far longer than the test lasts, on host OTHER_HOST."""
    long_trial = tiny_run(steps=1_000_000, train_rows=16, save_steps=1_000_000)
    command = sweep_command(*long_trial, "hydra.sweeper.n_trials=1", *STALE, f"hydra.sweep.dir={sweep_dir}")
    shell = f"hostname {OTHER_HOST} && exec {shlex.join(command)}"
    return subprocess.Popen(
        ["unshare", "-u", "sh", "-c", shell],
        cwd=REPO,
        env=TEST_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.skipif(not _can_fake_a_host(), reason="needs `unshare -u` (root) to run a sweeper under another hostname")
def test_a_trial_of_another_host_is_kept_while_it_beats_and_taken_over_once_it_stops(tmp_path):
    other = _sweeper_on_another_host(tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "0" / "run_info.json").is_file():  # its trial 0 is training
            assert other.poll() is None and time.monotonic() < deadline, "the other host's sweeper ended early"
            time.sleep(0.2)
        (first,) = trials(tmp_path, study_name="sft_lr")
        assert first.user_attrs["sft_exp_owner"]["host"] == OTHER_HOST
        # Older than stale_after_s by the time the sweeper here looks: only the heartbeat keeps it alive.
        time.sleep(max(0.0, 12 - (time.time() - first.datetime_start.timestamp())))

        here = sweep(tmp_path, "hydra.sweeper.n_trials=2", *STALE)
        assert here.returncode == 0, here.stderr[-3000:]
        assert "was interrupted" not in here.stdout + here.stderr
        zero, one = trials(tmp_path, study_name="sft_lr")
        assert (zero.state.name, one.state.name) == ("RUNNING", "COMPLETE")  # it ran a trial of its own instead
        assert zero.user_attrs["sft_exp_owner"]["host"] == OTHER_HOST
        assert zero.user_attrs["sft_exp_heartbeat"] > zero.datetime_start.timestamp() + 5  # beaten since it began
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # the other host goes down without a word
        other.wait()
    last_beat = trials(tmp_path, study_name="sft_lr")[0].user_attrs["sft_exp_heartbeat"]
    time.sleep(max(0.0, 11 - (time.time() - last_beat)))  # silent for longer than stale_after_s

    again = sweep(tmp_path, "hydra.sweeper.n_trials=2", *STALE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 0 was interrupted (its sweeper is gone): this sweeper runs it again" in again.stdout + again.stderr
    zero, one = trials(tmp_path, study_name="sft_lr")
    assert (zero.state.name, one.state.name) == ("COMPLETE", "COMPLETE")
    assert zero.user_attrs["sft_exp_owner"]["host"] == socket.gethostname()
