"""The report's pictures: training and evaluation curves of every job, each task score, the Optuna study.

A training curve is a line (it is logged every few steps). An evaluation is a measurement at a few steps:
drawn as points with markers, joined by a line only when there are more than two (two points joined by a
line read as a trajectory that was never measured); so is a training curve of two logged windows or fewer.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_jsonl
from sft_exp.tools.report_rows import number

# Below this many completed trials, parameter importances (fANOVA) rank noise: not drawn.
MIN_TRIALS_FOR_IMPORTANCES = 10


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _points(rows: list, key: str) -> list:
    points = [(r["step"], number(r.get(key))) for r in rows if "step" in r]
    return [(s, v) for s, v in points if v is not None and not math.isnan(v)]


def draw_measured(ax, points: list, color: str, label: str, line: str = "--") -> None:
    """Evaluations: a marker at every measured step; a line between them only when there are more than two."""
    ax.plot(*zip(*points), marker="o", linestyle=line if len(points) > 2 else "none", color=color, label=label)


def _save(fig, ax, path: Path, plt) -> Path:
    if ax.lines:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def curve_figure(runs: list, labels: list, key: str):
    """One figure of `key`: every job's training curve (a line) and its evaluations (markers)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (run, label) in enumerate(zip(runs, labels)):
        rows, color = read_jsonl(run / "metrics.jsonl"), f"C{i % 10}"  # one color per job: train and eval together
        train, evals = _points(rows, key), _points(rows, "eval_" + key)
        if train:  # logged every few steps: a line; two or fewer logged windows: points, as evaluations
            ax.plot(
                *zip(*train),
                linestyle="-" if len(train) > 2 else "none",
                marker="s" if len(train) <= 2 else None,
                color=color,
                label=f"{label} (train)",
            )
        if evals:
            draw_measured(ax, evals, color, f"{label} (eval)")
    ax.set(
        xlabel="step",
        ylabel=key,
        title=f"{key} per job (train: line, or squares for two windows; evaluations: circles)",
    )
    if ax.lines:
        ax.legend(fontsize=7)
    return fig


def plot_curves(runs: list, labels: list, out: Path) -> list:
    """loss.png, nll.png and accuracy.png (curve_figure of each)."""
    plt = _pyplot()
    written = []
    for name, key in (("loss", "loss"), ("nll", "nll"), ("accuracy", "mean_token_accuracy")):
        fig = curve_figure(runs, labels, key)
        fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


def plot_task_metrics(runs: list, labels: list, keys: list, out: Path) -> list:
    """eval_<task>_<metric>.png per task metric: every job's score at every evaluation."""
    plt = _pyplot()
    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (run, label) in enumerate(zip(runs, labels)):
            points = _points(read_jsonl(run / "metrics.jsonl"), key)
            if points:
                draw_measured(ax, points, f"C{i % 10}", label, line="-")
        ax.set(xlabel="step", ylabel=key, title=f"{key} per job (markers: evaluations)")
        written.append(_save(fig, ax, out / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", key) + ".png"), plt))
    return written


def _optuna_target(study: dict) -> dict:
    if len(study.get("directions", [])) == 1:
        return {"target_name": study["objectives"][0]}
    return {"target": lambda t: t.values[0], "target_name": study["objectives"][0]}


def optuna_plots(study: dict, out: Path, storage: Optional[str] = None) -> str:
    """optuna_history.png, and optuna_importances.png when enough trials completed; a line saying why not."""
    if not study:
        return ""
    try:
        plt = _pyplot()
        import optuna
        from optuna.visualization import matplotlib as optuna_plots_lib

        from sft_exp.sweeps.storage import open_storage

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        loaded = optuna.load_study(study_name=study["study_name"], storage=open_storage(storage or study["storage"]))
    except Exception as e:
        return (
            f"\nOptuna plots skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(give the storage with --storage)\n"
        )
    completed = len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    plots = [("optuna_history", optuna_plots_lib.plot_optimization_history)]
    lines = []
    if completed >= MIN_TRIALS_FOR_IMPORTANCES:
        plots.append(("optuna_importances", optuna_plots_lib.plot_param_importances))
    else:
        lines.append(
            f"optuna_importances.png not drawn: {completed} completed trial(s); parameter importances from "
            f"fewer than {MIN_TRIALS_FOR_IMPORTANCES} rank noise, not parameters."
        )
    for name, plot in plots:
        try:
            with warnings.catch_warnings():  # matplotlib's "no artists with labels" for a study without a legend
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(loaded, **_optuna_target(study))
            if name == "optuna_importances":
                ax.set_title(f"{ax.get_title()} (from {completed} completed trials)")
            ax.figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            lines.append(
                f"![{name}]({name}.png)"
                + (f" from {completed} completed trials" if name == "optuna_importances" else "")
            )
        except Exception as e:
            lines.append(f"{name}.png skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return "\n" + "\n".join(lines) + "\n"
