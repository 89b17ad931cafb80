"""Sweeps end to end in a subprocess: `python -m sft_exp -m --config-dir sweeps --config-name <name>`.

One multirun of the loss_x_memory sweep narrowed to 2 real jobs, plus 2 jobs that fail their config
check: the failures are recorded and the sweep goes on; the 2 real jobs leave run folders and 2
W&B runs in one group; the report reads it all back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import REPO, run_sft, tiny_run
from tests.test_loggers import wandb_records

TINY = tiny_run(steps=2, train_rows=16, save_steps=2, logger="logger.wandb.mode=offline")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    job = run_sft(
        "-m",
        "--config-dir",
        "sweeps",
        "--config-name",
        "loss_x_memory",
        "hydra.sweeper.params.memory=none",
        "trainer.precision=fp32,no_such_precision",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return sweep_dir


def summaries(sweep_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_a_failed_job_is_recorded_and_the_others_run(sweep):
    status = {job: summary["status"] for job, summary in summaries(sweep).items()}
    assert sorted(status.values()) == ["completed", "completed", "failed", "failed"]
    failed = [s for s in summaries(sweep).values() if s["status"] == "failed"]
    assert all("trainer.precision" in s["error"] for s in failed)


def test_each_job_leaves_a_run_folder_and_a_wandb_run_in_the_sweep_group(sweep):
    completed = sorted(job for job, s in summaries(sweep).items() if s["status"] == "completed")
    runs = []
    for job in completed:
        folder = sweep / job
        assert (folder / "metrics.jsonl").is_file() and (folder / "model").is_dir()
        runs.append(next(r["run"] for r in wandb_records(folder) if r["type"] == "run"))
    assert len({run["run_id"] for run in runs}) == 2
    assert {run["run_group"] for run in runs} == {sweep.as_posix()}
    assert {run["display_name"].split(",")[0] for run in runs} == {"loss=nll", "loss=dft"}  # named by its overrides


def test_the_report_tabulates_every_job_and_plots_the_curves(sweep, capsys):
    from sft_exp.tools.report import main

    assert main([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    completed = [row for row in rows if row["status"] == "completed"]
    assert {row["overrides"] for row in completed} == {
        "loss=nll trainer.precision=fp32",
        "loss=dft trainer.precision=fp32",
    }
    assert all(float(row["eval_loss"]) > 0 and float(row["train_tokens_per_s"]) > 0 for row in completed)
    markdown = (sweep / "report.md").read_text()
    assert "no_such_precision" in markdown and "Failed jobs" in markdown
    for plot in ("loss.png", "nll.png", "accuracy.png"):
        assert (sweep / plot).read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_param_naming_a_missing_key_fails_before_any_job(tmp_path):
    job = run_sft("-m", "optimizer.lrr=1e-4,1e-3", f"hydra.sweep.dir={tmp_path}")
    assert job.returncode == 2
    assert "optimizer.lrr: unknown key; did you mean `lr`?" in job.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no job started


@pytest.mark.parametrize("name", ["loss_x_memory", "lr_x_lora_rank", "optuna_lr", "optuna_task", "seeds_x_lr"])
def test_every_shipped_sweep_composes_and_sweeps_existing_keys(name):
    """What `--config-dir sweeps --config-name <name>` composes; a misspelled sweep key fails here."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sft_exp.config  # noqa: F401  registers the schemas the configs build on
    from sft_exp.paths import config_dir

    with initialize_config_dir(str(REPO / "sweeps"), version_base="1.3"):
        cfg = compose(name, overrides=[f"hydra.searchpath=[file://{config_dir()}]"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params
    for key in params:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, f"{name}: {key} is not a config key"


@pytest.mark.parametrize(
    "sweeper, command",
    [
        (
            "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
            "python -m sft_exp -m optimizer.lr=1e-3,2e-3 hydra.sweep.dir={sweep_dir}",
        ),
        ("hydra_plugins.sft_exp_sweeper.sft_optuna.SftOptunaSweeper", None),  # its sweeper prints its own
    ],
)
def test_a_job_stopped_in_a_sweep_prints_only_the_sweeps_resume_command(tmp_path, monkeypatch, sweeper, command):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    import sft_exp.config  # noqa: F401  registers the schemas
    from sft_exp.errors import TrainingInterrupted
    from sft_exp.paths import config_dir
    from sft_exp.run.hydra_job import resume_command
    from tests.helpers import compose as compose_a_run

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        job = compose("config", return_hydra_config=True)
    with open_dict(job):  # Hydra's config of one job of a sweep
        job.hydra.mode, job.hydra.sweep.dir = RunMode.MULTIRUN, str(tmp_path)
        job.hydra.sweeper = {"_target_": sweeper}
    HydraConfig.instance().set_config(job)
    monkeypatch.setattr("sys.argv", ["sft_exp", "-m", "optimizer.lr=1e-3,2e-3", "hydra.sweep.dir=elsewhere"])
    try:
        job_dir = tmp_path / "0"
        assert resume_command(job_dir) == (command and command.format(sweep_dir=tmp_path))
        message = str(TrainingInterrupted(15, 2, job_dir, command=resume_command(job_dir)))
        assert "resume_from_checkpoint" not in message and "hydra.run.dir" not in message
        assert ("Resume with: " in message) == (command is not None)
    finally:
        compose_a_run([])  # a single run's Hydra config again, for the tests that follow


@pytest.mark.slow  # 30 s; the test above checks the command it prints
def test_a_stopped_sweep_prints_the_sweeps_own_command_which_continues_it(tmp_path):
    """Ctrl-C / SIGTERM in a basic sweep: the job saves its checkpoint, and the one command printed is the sweep's,
    with its folder: run again, the stopped job resumes, the finished ones are kept, the rest run."""
    import shlex
    import subprocess
    import sys

    from tests.helpers import TEST_ENV
    from tests.training.test_resume import SIGNAL_DURING_STEP

    steps = ["trainer.max_steps=4", "trainer.save_steps=1000"]
    command = [
        sys.executable,
        "-c",
        SIGNAL_DURING_STEP,
        "2",
        "SIGTERM",
        "-m",
        "optimizer.lr=1e-3,2e-3",
        *tiny_run(steps=4, train_rows=16, save_steps=1000),
        *steps,
        f"hydra.sweep.dir={tmp_path}",
    ]
    stopped = subprocess.run(command, cwd=REPO, env=TEST_ENV, capture_output=True, text=True, timeout=300)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, output[-3000:]
    resume = [line.split("Resume with: ", 1)[1] for line in output.splitlines() if "Resume with: " in line]
    assert len(resume) == 1 and "resume_from_checkpoint" not in resume[0] and "hydra.run.dir" not in resume[0]
    assert resume[0].startswith("python -m sft_exp -m optimizer.lr=1e-3,2e-3 ")
    assert resume[0].endswith(f"hydra.sweep.dir={tmp_path}")
    again = run_sft(*shlex.split(resume[0])[3:], timeout=300)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert f"{tmp_path / '0'} holds this run (same settings): resuming from" in output
    assert {name: s["global_step"] for name, s in summaries(tmp_path).items()} == {"0": 4, "1": 4}
