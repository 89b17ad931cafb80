"""A pruner stops a trial from inside its job: each evaluation's objective reaches the trial through the
study's storage, a pruned run stops cleanly at that step with status `pruned`, and the study says PRUNED."""

from __future__ import annotations

import csv

import pytest

from sft_exp.atomic import read_jsonl
from tests.sweeps.helpers import summary, sweep, trials

# 6 steps, eval every 2; a threshold pruner that stops any trial whose eval loss is above 0: every trial,
# at its first evaluation after step 0.
PRUNED = [
    "hydra.sweeper.n_trials=2",
    "trainer.max_steps=6",
    "trainer.eval_steps=2",
    "trainer.save_steps=6",
    "hydra.sweeper.pruner={type: threshold, upper: 0.0}",
]


def test_a_pruned_trial_stops_at_an_evaluation_step_with_its_folder_complete_to_there(tmp_path):
    from sft_exp.tools.report import main

    job = sweep(tmp_path, *PRUNED)
    assert job.returncode == 0, job.stderr[-3000:]
    study = trials(tmp_path)
    assert [t.state.name for t in study] == ["PRUNED", "PRUNED"]
    for trial in study:
        run = tmp_path / str(trial.number)
        assert sorted(trial.intermediate_values) == [0, 2]  # before training, then step 2 (where it stopped)
        done = summary(run)
        assert done["status"] == "pruned" and done["global_step"] == 2
        assert abs(trial.intermediate_values[2] - done["eval_loss"]) < 1e-6
        assert max(row["step"] for row in read_jsonl(run / "metrics.jsonl")) == 2
        assert (run / "model").is_dir()
    assert main([str(tmp_path)]) == 0
    assert {row["status"] for row in csv.DictReader((tmp_path / "report.csv").open())} == {"pruned"}


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
def test_without_a_pruner_the_same_trials_run_to_their_last_step(tmp_path):
    job = sweep(tmp_path, *PRUNED[:-1])
    assert job.returncode == 0, job.stderr[-3000:]
    study = trials(tmp_path)
    assert [t.state.name for t in study] == ["COMPLETE", "COMPLETE"]
    assert all(summary(tmp_path / str(t.number))["global_step"] == 6 for t in study)


@pytest.mark.slow
def test_jobs_in_their_own_processes_report_and_are_pruned_through_the_storage(tmp_path):
    """submitit's local launcher runs each job in a process of its own, as SLURM does: the job opens the study."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'sft_exp[slurm]'")
    job = sweep(tmp_path, *PRUNED, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert [t.state.name for t in trials(tmp_path)] == ["PRUNED", "PRUNED"]
    assert all(summary(tmp_path / str(n))["status"] == "pruned" for n in (0, 1))
