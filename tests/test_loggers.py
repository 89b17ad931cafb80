"""Every logger, several at once, read back with its own library's reader; a tracker failure is a warning.

One tiny run with logger=[wandb,tensorboard,mlflow]: each tracker's own files hold every numeric
metric of metrics.jsonl at its step. W&B offline runs are read with wandb's transaction-log reader
(`wandb leet inspect --json`: wandb.Api needs a server), TensorBoard's event files with its
EventAccumulator, MLflow's store with MlflowClient.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from sft_exp.loggers import Logger
from tests.helpers import TEST_ENV, compose, tiny_run

ALL_LOGGERS = "logger=[wandb,tensorboard,mlflow]"


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from sft_exp.train import run

    run_dir = tmp_path_factory.mktemp("loggers")
    run(
        compose(
            [
                *tiny_run(steps=3, train_rows=24, save_steps=3, logger=ALL_LOGGERS),
                "logger.wandb.mode=offline",
                "logger.wandb.tags=[test]",
                "+logger.mlflow.tags.team=sft",
                f"run_dir={run_dir}",
            ]
        )
    )
    return run_dir


def numeric_rows(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for row in rows]


def wandb_records(run_dir: Path) -> list:
    """Every record of the one offline W&B run under <run_dir>/wandb, as wandb's own reader prints them."""
    logs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"one W&B run per job, inside the run folder: {logs}"
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(logs[0])],
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_wandb_offline_history_holds_every_metric_at_its_step(logged_run):
    records = wandb_records(logged_run)
    history = {}
    for record in records:
        if record["type"] == "history":
            history.setdefault(record["history"]["step"]["num"], {}).update(record["history"]["item"])
    for row in numeric_rows(logged_run):
        for key, value in row.items():
            if key != "step":
                assert history[row["step"]][key] == pytest.approx(value, rel=1e-12), (row["step"], key)
    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["project"] == "sft_exp" and run_record.get("tags") == ["test"]
    assert "trainer" in run_record["config"]["update"]  # the resolved config, every group
    assert any(r["type"] == "exit" for r in records)  # finished, not left running


def test_tensorboard_event_files_hold_every_metric_at_its_step(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    checked = 0
    for row in numeric_rows(logged_run):
        for key, value in row.items():
            if key != "step":
                assert scalars[key][row["step"]] == pytest.approx(value, rel=1e-6), (row["step"], key)
                checked += 1
    assert checked > 10 and "summary/eval_loss" in scalars


def test_mlflow_store_holds_every_metric_params_and_status(logged_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{logged_run / 'mlflow' / 'mlflow.db'}")
    run_id = (logged_run / "mlflow" / "sft_exp_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["team"] == "sft"
    assert run.data.params["trainer.max_steps"] == "3"  # the resolved config, flattened
    for row in numeric_rows(logged_run):
        for key, value in row.items():
            if key != "step":
                history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
                assert history[row["step"]] == pytest.approx(value, rel=1e-6), (row["step"], key)


class FailingLogger(Logger):
    """A tracker whose every call after start raises, as a dropped connection would."""

    name = "failing"

    def __init__(self, fail_in: str = "log"):
        super().__init__()
        self.fail_in = fail_in

    def _start(self, run):
        if self.fail_in == "start":
            raise ConnectionError("tracking server unreachable")

    def _log(self, metrics, step):
        if self.fail_in == "log":
            raise ConnectionError(f"lost the connection at step {step}")

    def _finish(self, status):
        if self.fail_in == "finish":
            raise ConnectionError("could not close the run")


def test_trackers_that_fail_are_warnings_and_the_run_completes(tmp_path, caplog):
    from sft_exp.train import run

    overrides = [*tiny_run(steps=2, train_rows=16, save_steps=5), "evals=none", f"run_dir={tmp_path}"]
    for fail_in in ("start", "log", "finish"):  # one tracker failing at each point, all in one run
        overrides += [
            f"+logger.{fail_in}._target_=tests.test_loggers.FailingLogger",
            f"+logger.{fail_in}.fail_in={fail_in}",
        ]
    with caplog.at_level(logging.WARNING):
        run(compose(overrides))
    for what in ("start failed", "log at step 1 failed", "finish failed"):
        assert f"failing logger: {what}" in caplog.text
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    steps = [row["step"] for row in numeric_rows(tmp_path) if "loss" in row]
    assert steps == [1, 2]  # metrics.jsonl is complete


def test_wandb_that_cannot_reach_a_server_is_a_warning(tmp_path, monkeypatch, caplog):
    from sft_exp.loggers import RunDescription, WandbLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no key anywhere
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # and no server
    logger = WandbLogger(mode="online")
    with caplog.at_level(logging.WARNING):
        logger.start(RunDescription(tmp_path, {"seed": 1}))
        logger.log_metrics({"loss": 1.0}, 1)
        logger.finish("completed")
    assert not logger.active and "wandb logger: start failed" in caplog.text
