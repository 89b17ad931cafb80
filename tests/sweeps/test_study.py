"""The sft_optuna sweeper end to end: trials named by number, a failed job recorded while the sweep goes on,
a misspelled objective stopped at the first trial, bad input refused before any job."""

from __future__ import annotations

import csv

import pytest

from tests.sweeps.helpers import job_folders, states, summary, sweep


@pytest.fixture(scope="module")
def grid_with_a_failure(tmp_path_factory):
    """A grid of 2 learning rates x 2 precisions, one of which no run accepts: 4 trials, 2 fail."""
    sweep_dir = tmp_path_factory.mktemp("grid")
    job = sweep(
        sweep_dir,
        "hydra.sweeper.sampler.type=grid",
        "hydra.sweeper.n_trials=null",
        "optimizer.weight_decay=0.0",
        "optimizer.lr=1e-3,3e-3",
        "trainer.precision=fp32,no_such_precision",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return sweep_dir


def test_every_grid_point_is_a_trial_in_the_folder_of_its_number(grid_with_a_failure):
    assert job_folders(grid_with_a_failure) == [0, 1, 2, 3]
    found = states(grid_with_a_failure)
    assert sorted(found.values()) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    for number, state in found.items():
        status = summary(grid_with_a_failure / str(number))["status"]
        assert status == ("completed" if state == "COMPLETE" else "failed")


def test_a_failed_job_is_a_failed_trial_and_the_report_shows_its_error_line(grid_with_a_failure):
    from sft_exp.tools.report import main

    failed = [n for n, s in states(grid_with_a_failure).items() if s == "FAIL"]
    assert all("trainer.precision" in summary(grid_with_a_failure / str(n))["error"] for n in failed)
    assert main([str(grid_with_a_failure)]) == 0
    markdown = (grid_with_a_failure / "report.md").read_text()
    assert "Failed jobs" in markdown and "no_such_precision" in markdown
    rows = {row["job"]: row for row in csv.DictReader((grid_with_a_failure / "report.csv").open())}
    assert {rows[str(n)]["status"] for n in failed} == {"failed"}
    assert (grid_with_a_failure / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"


def test_a_misspelled_objective_stops_at_the_first_trial_listing_what_the_run_reports(tmp_path):
    job = sweep(tmp_path, "objective=eval_los", "hydra.sweeper.n_trials=3")
    assert job.returncode == 2, job.stderr[-2000:]
    assert "'eval_los' is not a metric the run reports" in job.stderr
    assert "eval_loss" in job.stderr and "eval_mean_token_accuracy" in job.stderr
    assert job_folders(tmp_path) == [0] and states(tmp_path) == {0: "FAIL"}


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:9/none"], "hydra.sweeper.storage="),
        (["optimizer.lr=tag(sqrt, interval(1e-5, 1e-3))"], "hydra.sweeper.params.optimizer.lr: unknown tag"),
        (["optimizer.lrr=interval(1e-5, 1e-3)"], "optimizer.lrr"),
        (["hydra.sweeper.sampler.type=annealing"], "hydra.sweeper.sampler.type='annealing' is not one of"),
    ],
)
def test_bad_input_fails_before_any_job_naming_what_is_wrong(tmp_path, overrides, says):
    job = sweep(tmp_path, *overrides)
    assert job.returncode == 2, job.stderr[-2000:]
    assert says in job.stderr
    assert job_folders(tmp_path) == []


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
def test_several_objectives_with_a_direction_each_give_a_pareto_front(tmp_path):
    from omegaconf import OmegaConf

    from tests.sweeps.helpers import trials

    job = sweep(
        tmp_path,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.objectives=[eval_loss,eval_mean_token_accuracy]",
        "hydra.sweeper.direction=[minimize,maximize]",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    for trial in trials(tmp_path):
        done = summary(tmp_path / str(trial.number))
        assert trial.values == [done["eval_loss"], done["eval_mean_token_accuracy"]]
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.directions == ["minimize", "maximize"] and results.best_trials
