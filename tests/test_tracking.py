"""W&B per job: an offline run inside the run folder whose history holds metrics.jsonl, step for step.

The offline run is read back with wandb's own transaction-log reader (`wandb leet inspect --json`):
wandb.Api needs a server, which offline runs have none of.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_ENV, compose, tiny_run

TINY = tiny_run(steps=3, train_rows=24, save_steps=3, logger="logger=wandb")


def wandb_records(run_dir: Path) -> list:
    """Every record of the W&B run(s) under <run_dir>/wandb, as wandb's reader prints them."""
    logs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logs, f"no offline W&B run under {run_dir / 'wandb'}"
    records = []
    for log_file in logs:
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
                             env=TEST_ENV, capture_output=True, text=True, timeout=120, check=True)
        records += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return records


def history_by_step(records: list) -> dict:
    history = {}
    for record in records:
        if record["type"] == "history":
            history.setdefault(record["history"]["step"]["num"], {}).update(record["history"]["item"])
    return history


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    from sft_exp.train import run

    run_dir = tmp_path_factory.mktemp("wandb_run")
    run(compose([*TINY, "logger.mode=offline", "logger.tags=[test]", f"run_dir={run_dir}"]))
    return run_dir


def test_offline_wandb_history_holds_every_metric_at_its_step(offline_run):
    records = wandb_records(offline_run)
    history = history_by_step(records)
    rows = [json.loads(line) for line in (offline_run / "metrics.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == set(history)
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                assert history[row["step"]][key] == pytest.approx(value, rel=1e-12), (row["step"], key)

    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["project"] == "sft_exp" and run_record.get("tags") == ["test"]
    assert "trainer" in run_record["config"]["update"]  # the resolved config, every group
    assert any(r["type"] == "exit" for r in records)  # finished, not left running


def test_a_wandb_that_cannot_start_is_a_warning_and_metrics_still_land(tmp_path, monkeypatch, caplog):
    from transformers import TrainerState

    from sft_exp.tracking import RunRecorder, WandbLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no key anywhere
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # and no server
    logger = WandbLogger(mode="online")
    with caplog.at_level(logging.WARNING):
        logger.start(tmp_path, {"seed": 1})
    assert logger.run is None and "W&B could not start" in caplog.text

    RunRecorder(tmp_path, logger).on_log(None, TrainerState(global_step=1, max_steps=1), None, logs={"loss": 1.5})
    logger.finish()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 1.5}
