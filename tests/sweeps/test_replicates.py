"""Seeds as replicates: the interval and the verdict on known numbers, then end to end, both ways a sweep
replicates (the sweeper's `seeds`, a `seed=` grid axis) grouped by the report."""

from __future__ import annotations

import csv
import math

import pytest

from sft_exp.sweeps.replicates import config_key, groups, summarize, verdict
from tests.helpers import run_sft, tiny_run
from tests.sweeps.helpers import summary, sweep, trials


def test_the_interval_is_students_t_on_the_mean():
    stats = summarize([0.906, 0.953, 0.969])  # the default run's exact match over seeds 0/1/2
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.94266667)
    assert stats["std"] == pytest.approx(0.0327465, rel=1e-5)
    half = 4.302652729749464 * stats["std"] / math.sqrt(3)  # t(0.975, df=2)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((stats["mean"] - half, stats["mean"] + half))
    assert summarize([1.0])["n"] == 1 and math.isnan(summarize([1.0])["std"])


def rows(config: str, values: dict) -> list:
    return [
        {"job": f"{config}-{s}", "status": "completed", "overrides": f"{config} seed={s}", "score": v}
        for s, v in values.items()
    ]


def test_a_lead_smaller_than_the_seed_spread_is_within_noise_and_a_consistent_one_is_beyond():
    noisy = groups(rows("lr=1", {0: 0.91, 1: 0.95, 2: 0.97}) + rows("lr=2", {0: 0.95, 1: 0.92, 2: 0.95}))
    assert set(noisy) == {"lr=1", "lr=2"}
    said = verdict(noisy, "score", maximize=True)
    assert (
        "`lr=1`" in said.split("runner-up")[0] and "paired t-test over 3 seeds" in said and "within seed noise" in said
    )
    consistent = groups(rows("lr=1", {0: 0.91, 1: 0.95, 2: 0.97}) + rows("lr=2", {0: 0.81, 1: 0.86, 2: 0.86}))
    assert "beyond seed noise" in verdict(consistent, "score", maximize=True)
    assert "`lr=2`" in verdict(consistent, "score", maximize=False).split("runner-up")[0]  # lower is better
    assert config_key("loss=nll seed=3 optimizer.lr=0.1") == "loss=nll optimizer.lr=0.1"


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
def test_the_sweepers_seeds_run_each_trial_per_seed_and_the_sampler_sees_the_mean(tmp_path):
    from sft_exp.tools.report import main

    job = sweep(
        tmp_path,
        "hydra.sweeper.seeds=[0,1]",
        "objective=eval_loss",
        "hydra.sweeper.direction=minimize",
        "evals=none",
        name="seeds_x_lr",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    study = trials(tmp_path, study_name="seeds_x_lr")
    assert [t.state.name for t in study] == ["COMPLETE", "COMPLETE"]
    for trial in study:
        losses = [summary(tmp_path / str(trial.number) / f"seed-{s}")["eval_loss"] for s in (0, 1)]
        assert trial.value == pytest.approx(sum(losses) / 2) and losses[0] != losses[1]
    assert main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "## Replicates" in markdown and "paired t-test over 2 seeds" in markdown
    table = list(csv.DictReader((tmp_path / "replicates.csv").open()))
    assert sorted(r["config"] for r in table) == ["optimizer.lr=0.001", "optimizer.lr=0.002"]
    assert all(
        r["n"] == "2" and float(r["eval_loss ci_low"]) < float(r["eval_loss mean"]) < float(r["eval_loss ci_high"])
        for r in table
    )


@pytest.mark.slow  # the same grouping as the sweeper's seeds (above), through the basic sweeper
def test_a_seed_axis_of_the_basic_sweeper_is_grouped_the_same_way(tmp_path):
    from sft_exp.tools.report import main

    job = run_sft(
        "-m",
        "optimizer.lr=1e-3,2e-3",
        "seed=0,1",
        *tiny_run(steps=2, train_rows=16, save_steps=2),
        f"hydra.sweep.dir={tmp_path}",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert main([str(tmp_path)]) == 0
    table = list(csv.DictReader((tmp_path / "replicates.csv").open()))
    assert sorted(r["config"] for r in table) == ["optimizer.lr=0.001", "optimizer.lr=0.002"]
    assert "Best config by mean eval_loss (lower is better)" in (tmp_path / "report.md").read_text()
