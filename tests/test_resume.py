"""Exact resume: 2N straight steps and N + resume to 2N give bitwise-identical weights and metrics.jsonl.

Runs on CPU with the tiny default. Stops are real: a SIGKILL in the middle of writing a checkpoint
(the partial checkpoint must be ignored) and a SIGTERM sent by this test to a running job.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, TEST_ENV, compose
from sft_exp.errors import ConfigError

STEPS = 4
TINY = [
    f"trainer.max_steps={STEPS}", "trainer.logging_steps=3", "trainer.save_steps=2", "trainer.save_total_limit=3",
    "trainer.num_sample_generations=0", "trainer.per_device_train_batch_size=4", "trainer.per_device_eval_batch_size=8",
    "data.sources.0.max_samples=48", "data.eval_sources.0.max_samples=8", "data.max_length=64", "logger=none",
]
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


def train(run_dir: Path, *overrides: str) -> None:
    from sft_exp.train import run

    run(compose([*TINY, f"run_dir={run_dir}", *overrides]))


def comparable_rows(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(w in k for w in WALL_CLOCK)} for row in rows]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert comparable_rows(run_dir) == comparable_rows(reference)
    weights, expected = load_file(run_dir / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        assert weights[name].equal(expected[name]), name  # bitwise, not approximately


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    train(run_dir)
    return run_dir


def test_resume_after_a_kill_mid_save_skips_the_partial_checkpoint(tmp_path, straight, caplog):
    run_dir = tmp_path / "run"
    job = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, *TINY, f"hydra.run.dir={run_dir}"],
                         cwd=REPO, env=TEST_ENV, capture_output=True, text=True, timeout=300)
    assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "tmp-checkpoint-4").is_dir() and not (checkpoints / "checkpoint-4").exists()
    assert max(row["step"] for row in comparable_rows(run_dir)) == STEPS  # rows past checkpoint-2 exist

    with caplog.at_level(logging.WARNING):
        train(run_dir, "trainer.resume_from_checkpoint=true")
    assert "tmp-checkpoint-4" in caplog.text  # the skipped checkpoint is named
    assert_same_run(run_dir, straight)


def test_sigterm_saves_at_the_next_step_and_resume_is_exact(tmp_path, straight):
    run_dir = tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "sft_exp", *TINY, f"hydra.run.dir={run_dir}"],
                           cwd=REPO, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not any("loss" in row for row in _rows_so_far(run_dir)):  # training has started
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=240)[0]
    assert job.returncode == 128 + signal.SIGTERM, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    saved = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")]
    assert saved and max(saved) < STEPS, f"stopped at {saved}: the signal did not stop training early"
    assert "trainer.resume_from_checkpoint=true" in output  # the log says how to resume

    train(run_dir, "trainer.resume_from_checkpoint=true")
    assert_same_run(run_dir, straight)


def test_resume_with_no_checkpoint_says_which_folder_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"no complete checkpoint.*hydra\.run\.dir="):
        train(tmp_path / "empty", "trainer.resume_from_checkpoint=true")
    with pytest.raises(ConfigError, match="no such folder"):
        train(tmp_path / "other", f"trainer.resume_from_checkpoint={tmp_path / 'nowhere'}")


def test_a_checkpoint_without_its_trainer_state_is_skipped_with_a_warning(tmp_path, straight, caplog):
    import shutil

    from sft_exp.checkpoints import latest_complete_checkpoint

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
