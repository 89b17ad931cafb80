"""Exact resume: 2N straight steps and N + resume to 2N give bitwise-identical weights and metrics.jsonl.

Runs on CPU with the tiny default. Stops are real: a SIGKILL in the middle of writing a checkpoint
(the partial checkpoint must be ignored), and SIGTERM/SIGINT raised inside a known optimizer step of a
job whose scheduled checkpoints never come (save_steps past the run), so any checkpoint is the signal's.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sft_exp.errors import ConfigError
from tests.helpers import DEMO_EVAL_ROWS, NO_SAMPLE_GENERATIONS, REPO, RESUME, RESUME_KEY, TEST_ENV, compose

STEPS = 4
TINY = [
    f"trainer.max_steps={STEPS}",
    "trainer.logging_steps=3",
    "trainer.save_steps=2",
    "trainer.save_total_limit=3",
    *NO_SAMPLE_GENERATIONS,
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=8",
    "data.sources.0.max_samples=48",
    DEMO_EVAL_ROWS.format(8),
    "data.max_length=64",
    "logger=none",
]
NO_SCHEDULED_SAVES = "trainer.save_steps=1000"  # larger than the run: only a signal can make a checkpoint
WALL_CLOCK = ("runtime", "per_second", "preparation_time")
# logging_steps=3 with save_steps=2: checkpoints fall between logging steps, the case that needs care.

# A job that is SIGKILLed while it writes checkpoint-4: the optimizer state is on disk, the trainer state is not.
KILL_MID_SAVE = """
import os, signal, sys, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if "tmp-checkpoint-4" in str(f):
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.argv = ["sft_exp", *sys.argv[1:]]
from sft_exp.__main__ import main
main()
"""


def train(run_dir: Path, *overrides: str) -> float:
    from sft_exp.train import run

    return run(compose([*TINY, f"run_dir={run_dir}", *overrides]))


def comparable_rows(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Every value of every row is the straight run's, the end-of-training row's whole-run train_loss included.
    return [{k: v for k, v in row.items() if not any(w in k for w in WALL_CLOCK)} for row in rows]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert comparable_rows(run_dir) == comparable_rows(reference)
    weights, expected = (
        load_file(run_dir / "model" / "model.safetensors"),
        load_file(reference / "model" / "model.safetensors"),
    )
    assert weights.keys() == expected.keys()
    for name in expected:
        assert weights[name].equal(expected[name]), name  # bitwise, not approximately


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    train(run_dir)
    return run_dir


def test_resuming_a_complete_run_trains_nothing_and_writes_nothing(tmp_path, straight):
    # transformers would train a step past max_steps from the last checkpoint (step 5 of 4).
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    objective = train(run_dir, RESUME)
    assert objective == json.loads((run_dir / "summary.json").read_text())["eval_loss"]
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    (run_dir / "summary.json").unlink()  # the final checkpoint saved, the run killed before its summary
    with pytest.raises(
        ConfigError,
        match=rf"checkpoint-{STEPS} is at step {STEPS}, trainer.max_steps={STEPS}: "
        rf"nothing is left to train .* trainer.max_steps={2 * STEPS}",
    ):
        train(run_dir, RESUME)


def test_a_resume_with_changed_settings_is_recorded_and_reproduce_says_so(tmp_path, straight):
    import shutil

    from sft_exp.tools.reproduce import _changed_resumes

    run_dir = tmp_path / "moved"  # a run folder moved before its resume: its paths are not a change
    shutil.copytree(straight, run_dir)
    train(run_dir, RESUME, f"trainer.max_steps={STEPS + 2}")
    (resume,) = json.loads((run_dir / "run_info.json").read_text())["resumes"]
    assert resume == {
        "from": str(run_dir / "checkpoints" / f"checkpoint-{STEPS}"),
        "changed": {"trainer.max_steps": [STEPS, STEPS + 2]},
    }
    assert _changed_resumes(run_dir) == [resume] and _changed_resumes(straight) == []


def test_resume_after_a_kill_mid_save_skips_the_partial_checkpoint(tmp_path, straight, caplog):
    run_dir = tmp_path / "run"
    job = subprocess.run(
        [sys.executable, "-c", KILL_MID_SAVE, *TINY, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "tmp-checkpoint-4").is_dir() and not (checkpoints / "checkpoint-4").exists()
    assert max(row["step"] for row in comparable_rows(run_dir)) == STEPS  # rows past checkpoint-2 exist

    with caplog.at_level(logging.WARNING):
        train(run_dir, RESUME)
    assert "tmp-checkpoint-4" in caplog.text  # the skipped checkpoint is named
    assert_same_run(run_dir, straight)


# Sends itself real signals (signal.raise_signal, so each is handled before the next) during optimizer step
# `at_step`, from inside the trainer's training_step: argv = at_step, comma-separated signal names, overrides.
SIGNAL_DURING_STEP = """
import signal, sys
from sft_exp.training.trainer import SFTTrainer
at_step, names = int(sys.argv[1]), sys.argv[2].split(",")
real_training_step = SFTTrainer.training_step
def training_step(self, *args, **kwargs):
    if self.state.global_step + 1 == at_step and not getattr(self, "signalled", False):
        self.signalled = True
        print(f"sending {names} during step {at_step}", flush=True)
        for name in names:
            signal.raise_signal(getattr(signal, name))
    return real_training_step(self, *args, **kwargs)
SFTTrainer.training_step = training_step
sys.argv = ["sft_exp", *sys.argv[3:]]
from sft_exp.__main__ import main
main()
"""


# What submitit does in a SLURM job before it runs ours: a USR2 handler that requeues the job and exits.
SUBMITIT_HANDLER = """
import os, signal, sys
def checkpoint_and_requeue(signum, frame):
    print("requeue handler: checkpoints", sorted(os.listdir(sys.argv[-1].split("=", 1)[1] + "/checkpoints")))
    sys.exit(-1)
signal.signal(signal.SIGUSR2, checkpoint_and_requeue)
"""


def signalled_job(run_dir: Path, at_step: int, *signals: str, prelude: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + SIGNAL_DURING_STEP,
            str(at_step),
            ",".join(signals),
            *TINY,
            NO_SCHEDULED_SAVES,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def saved_steps(run_dir: Path) -> list:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[-1]) for p in folder.glob("*checkpoint-*")) if folder.is_dir() else []


@pytest.mark.parametrize("name,status", [("SIGTERM", 143), pytest.param("SIGINT", 130, marks=pytest.mark.slow)])
def test_a_signal_saves_at_the_end_of_that_step_and_resume_is_exact(tmp_path, straight, name, status):
    run_dir, at_step = tmp_path / "run", 2
    job = signalled_job(run_dir, at_step, name)
    output = job.stdout + job.stderr
    assert job.returncode == status, output[-3000:]
    assert saved_steps(run_dir) == [at_step], "the checkpoint must be the step the signal arrived in, and only it"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert f"hydra.run.dir={run_dir} {RESUME}" in output  # the log says how to resume

    train(run_dir, RESUME)
    assert_same_run(run_dir, straight)
    # What the resume changed is recorded (scheduled saves, which leave the run as it is).
    resumes = json.loads((run_dir / "run_info.json").read_text())["resumes"]
    assert resumes == [
        {"from": str(run_dir / "checkpoints" / f"checkpoint-{at_step}"), "changed": {"trainer.save_steps": [1000, 2]}}
    ]


def test_slurms_preemption_signal_saves_that_step_before_submitit_requeues(tmp_path, straight, monkeypatch):
    # SLURM sends USR2 (submitit's signal) then SIGTERM; submitit's handler, called at once, would exit mid-step.
    run_dir = tmp_path / "run"
    job = signalled_job(run_dir, 3, "SIGUSR2", "SIGTERM", prelude=SUBMITIT_HANDLER)
    output = job.stdout + job.stderr
    assert job.returncode == 255, output[-3000:]  # the handler's sys.exit(-1)
    assert "requeue handler: checkpoints ['checkpoint-3']" in output  # called after the save, not before
    assert "requeued and resumes from it by itself" in output and RESUME not in output
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(run_dir)
    assert_same_run(run_dir, straight)


def test_a_requeued_job_without_a_checkpoint_starts_afresh(tmp_path, monkeypatch):
    from sft_exp.training.checkpoints import resolve_resume

    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert resolve_resume(None, tmp_path) is None  # died before its first checkpoint
    assert resolve_resume(False, tmp_path) is None


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    job = signalled_job(run_dir, 2, "SIGTERM", "SIGTERM")
    assert job.returncode == -signal.SIGTERM, (job.returncode, job.stderr[-3000:])  # killed by it: 143 in a shell
    assert "sending" in job.stdout and saved_steps(run_dir) == []
    rows = _rows_so_far(run_dir)
    assert max((row["step"] for row in rows if "loss" in row), default=0) < 2  # step 2 never finished


def test_resume_with_no_checkpoint_says_which_folder_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"no complete checkpoint.*hydra\.run\.dir="):
        train(tmp_path / "empty", RESUME)
    with pytest.raises(ConfigError, match="no such folder"):
        train(tmp_path / "other", f"{RESUME_KEY}={tmp_path / 'nowhere'}")


def test_a_checkpoint_without_its_trainer_state_is_skipped_with_a_warning(tmp_path, straight, caplog):
    import shutil

    from sft_exp.training.checkpoints import latest_complete_checkpoint

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(straight / "checkpoints" / "checkpoint-2", checkpoints / "checkpoint-2")
    shutil.copytree(straight / "checkpoints" / "checkpoint-4", checkpoints / "checkpoint-4")
    (checkpoints / "checkpoint-4" / "trainer_state.json").unlink()  # as a writer that is not atomic can leave it
    with caplog.at_level(logging.WARNING):
        assert latest_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    assert "checkpoint-4" in caplog.text


def _rows_so_far(run_dir: Path) -> list:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


# ----------------------------------------------------------------------------- a relaunch into a run's folder
def relaunch(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The interrupted job's command again (as a user repeats it), into the same folder."""
    return subprocess.run(
        [sys.executable, "-m", "sft_exp", *TINY, NO_SCHEDULED_SAVES, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def folder_bytes(run_dir: Path) -> dict:
    return {path.relative_to(run_dir): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A CLI run stopped by SIGTERM in step 2: its checkpoint-2, Hydra's .hydra/ and log, its resolved config."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    job = signalled_job(run_dir, 2, "SIGTERM")
    assert job.returncode == 143, (job.stdout + job.stderr)[-3000:]
    return run_dir


def test_a_relaunch_with_other_settings_stops_and_leaves_the_folder_as_it_was(tmp_path, interrupted):
    import shutil

    run_dir = tmp_path / "run"  # a copy: a folder that moved is the same run (its own paths are no change)
    shutil.copytree(interrupted, run_dir)
    before = folder_bytes(run_dir)
    assert {Path(".hydra/config.yaml"), Path("resolved_config.yaml"), Path("__main__.log")} <= set(before)
    job = relaunch(run_dir, "trainer.max_steps=6", "optimizer.lr=1e-3")
    output = job.stdout + job.stderr
    assert job.returncode == 2, output[-3000:]
    assert (
        f"{run_dir} holds a run with other settings (optimizer.lr: 0.002 -> 0.001; trainer.max_steps: 4 -> 6); "
        "nothing there was changed. To start afresh, launch into a new folder"
    ) in output
    assert "resume_from_checkpoint=true" in output and "Traceback" not in output
    refused = relaunch(run_dir, f"{RESUME_KEY}=false")
    assert refused.returncode == 2 and "sft_exp never overwrites one" in refused.stdout + refused.stderr
    assert folder_bytes(run_dir) == before  # checkpoints, resolved_config.yaml, .hydra/, the log: as they were


def test_a_relaunch_with_the_same_settings_resumes_and_says_so(tmp_path, interrupted, straight):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    job = relaunch(run_dir)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-3000:]
    assert f"{run_dir} holds this run (same settings): resuming from {run_dir}/checkpoints/checkpoint-2" in output
    assert_same_run(run_dir, straight)
    done = folder_bytes(run_dir)
    again = relaunch(run_dir)  # complete: nothing to train, nothing written
    assert again.returncode == 0 and "completed: nothing to train" in again.stdout + again.stderr
    assert folder_bytes(run_dir) == done


def test_a_folder_whose_run_saved_nothing_is_started_afresh_whatever_its_settings(tmp_path, interrupted):
    """A start that saved no checkpoint (a crash before the first save, a sweep trial its sweeper runs again) has
    nothing to continue from: a launch with any settings starts afresh there, and says so."""
    import shutil

    from sft_exp.training.relaunch import Relaunch, _decide

    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    cfg = compose([*TINY, NO_SCHEDULED_SAVES, "trainer.max_steps=6", f"run_dir={run_dir}"])
    assert "other settings" in _decide(cfg, run_dir).refusal  # while it holds checkpoint-2
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-2")
    assert _decide(cfg, run_dir) == Relaunch()
