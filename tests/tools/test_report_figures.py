"""Every figure the report shows is right and says what it rests on: one meaning per metric name, evaluations as
points, every score with its n and source, a resume never shown as a configuration, importances only from
enough trials, the contamination count per job; and `python -m sft_exp.report RUN_A RUN_B` side by side."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import RESUME, compose

RUN = ["trainer.max_steps=4", "trainer.logging_steps=2", "trainer.save_steps=4", "trainer.per_device_train_batch_size=4",
       "data.sources.0.max_samples=48", "data.sources.0.eval_max_samples=8", "data.max_length=64",
       "evals.heldout.limit=4", "evals.heldout.max_new_tokens=4", "logger=none"]  # fmt: skip


def train(run_dir, *overrides):
    from sft_exp.train import run

    run(compose([*RUN, f"run_dir={run_dir}", *overrides]))
    return run_dir


def hydra_overrides(run_dir, *overrides) -> None:
    """What Hydra writes for a command-line run (compose does not): .hydra/overrides.yaml."""
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of the default: A, and B with another learning rate, stopped at 4 steps and resumed to 6."""
    root = tmp_path_factory.mktemp("runs")
    a = train(root / "a", "optimizer.lr=1e-3")
    hydra_overrides(a, "optimizer.lr=1e-3")
    b = train(root / "b", "optimizer.lr=2e-3")
    train(b, "optimizer.lr=2e-3", "trainer.max_steps=6", RESUME)
    hydra_overrides(b, "optimizer.lr=2e-3", "trainer.max_steps=6", RESUME)
    return a, b


def test_two_runs_side_by_side_show_what_differs_and_never_the_resume(runs, tmp_path, capsys):
    from sft_exp.tools.report import main

    a, b = runs
    assert main([str(a), str(b), "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "# 2 runs compared" in markdown and "## Configs that differ" in markdown
    assert "| optimizer.lr | 0.001 | 0.002 |" in markdown and "| trainer.max_steps | 4 | 6 |" in markdown
    assert "resume_from_checkpoint" not in markdown and "run_dir" not in markdown  # how a run was launched
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["job"] for r in rows] == ["a", "b"] and [r["overrides"] for r in rows] == [
        "optimizer.lr=1e-3",
        "optimizer.lr=2e-3 trainer.max_steps=6",
    ]
    for plot in ("loss.png", "nll.png", "accuracy.png", "eval_heldout_exact_match.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
    assert "error" not in capsys.readouterr().err


def test_one_meaning_per_metric_name(runs, tmp_path):
    from sft_exp.tools.report import report

    a, b = runs
    folder = tmp_path / "sweep"
    folder.mkdir()
    for name, run in (("0", a), ("1", b)):
        (folder / name).symlink_to(run)
    report(folder)
    rows = {r["job"]: r for r in csv.DictReader((folder / "report.csv").open())}
    for name, run in (("0", a), ("1", b)):
        summary = json.loads((run / "summary.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        final = next(r for r in metrics if "train_loss" in r)
        last = [r for r in metrics if "loss" in r][-1]
        assert float(rows[name]["train_loss"]) == pytest.approx(summary["train_loss"], rel=1e-3)
        assert summary["train_loss"] == final["train_loss"]  # summary.json and metrics.jsonl: the whole run's
        assert float(rows[name]["last_window_loss"]) == pytest.approx(last["loss"], rel=1e-3)
        assert rows[name]["last_window"] == f"{summary['last_window_steps'][0]}-{last['step']}"
    assert rows["1"]["last_window"] == "5-6" and rows["1"]["steps"] == "6"


def test_every_score_has_its_n_and_source_and_each_job_its_contamination_count(runs, tmp_path):
    from sft_exp.tools.report import report

    a, _ = runs
    markdown = report(a, tmp_path)
    info = json.loads((a / "run_info.json").read_text())
    held_out = info["evaluations"]["eval set"]["source"]
    assert f"| eval_heldout/* | 4 prompts | `held-out rows ({held_out})` | all |" in markdown
    assert f"| eval_loss, eval_nll, eval_mean_token_accuracy, eval_entropy | 8 rows | `{held_out}` | all |" in markdown
    row = next(csv.DictReader((tmp_path / "report.csv").open()))
    found = info["data_stats"]["contamination"]
    assert row["contaminated_rows"] == str(found["rows"]) and row["contamination"].startswith(f"{found['rows']} of ")


def test_evaluations_are_points_with_a_line_only_between_more_than_two(tmp_path):
    from sft_exp.tools.report_plots import curve_figure

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 11)] + [{"step": 0, "eval_loss": 3.2},
                                                                          {"step": 10, "eval_loss": 2.1}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (train_line, two_evals) = curve_figure([run], ["run"], "loss").axes[0].lines
    assert train_line.get_linestyle() == "-" and len(train_line.get_xdata()) == 10
    assert two_evals.get_marker() == "o" and two_evals.get_linestyle() == "None"  # before and after: no line
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "eval_loss": 2.5}) + "\n")
    (_, three_evals) = curve_figure([run], ["run"], "loss").axes[0].lines
    assert three_evals.get_marker() == "o" and three_evals.get_linestyle() == "--"


@pytest.mark.parametrize("completed", [3, 10])
def test_importances_only_from_enough_trials(tmp_path, completed):
    optuna = pytest.importorskip("optuna")
    from sft_exp.tools.report_plots import optuna_plots

    journal = str(tmp_path / "optuna.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) + 0.1 * t.suggest_float("wd", 0, 1), n_trials=completed)
    said = optuna_plots(
        {"study_name": "s", "storage": f"journal:{journal}", "objectives": ["eval_loss"], "directions": ["minimize"]},
        tmp_path,
    )
    assert (tmp_path / "optuna_history.png").is_file()
    if completed < 10:
        assert not (tmp_path / "optuna_importances.png").exists()
        assert f"optuna_importances.png not drawn: {completed} completed trial(s)" in said
    else:
        assert (tmp_path / "optuna_importances.png").is_file() and f"from {completed} completed trials" in said
