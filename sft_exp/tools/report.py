"""`python -m sft_exp.report <multirun folder>`: one table and one picture for a sweep.

Reads the run folders alone (metrics.jsonl, summary.json, .hydra/overrides.yaml): no W&B needed.
Writes into the multirun folder (or --out):
  report.md, report.csv   one row per job: overrides, final train/eval loss, accuracy, entropy,
                          tokens/s, peak memory, wall time, status
  loss.png, nll.png, accuracy.png   train (solid) and eval (dashed) curves of every job
  eval_<task>_<metric>.png          each task score (evals) of every job across steps
For a single run folder, report.md also lists the examples whose task score changed between the
first evaluation (before training) and the last.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Optional

from sft_exp.errors import UserError
from sft_exp.run.recorder import read_rows

COLUMNS = ("job", "overrides", "status", "steps", "train_loss", "eval_loss", "eval_nll", "mean_token_accuracy",
           "eval_mean_token_accuracy", "entropy", "train_tokens_per_s", "peak_memory_mb", "wall_time_s")
RUN_MARKERS = ("metrics.jsonl", "summary.json", "resolved_config.yaml", ".hydra/config.yaml")


def find_runs(folder: Path) -> list:
    """The run folders of a multirun folder (numbered jobs first, in order), or the folder itself if it is a run."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder. Give a multirun folder, e.g. outputs/multiruns/<date>/<time>.")
    if _is_run(folder):
        return [folder]
    runs = [p for p in folder.iterdir() if p.is_dir() and _is_run(p)]
    if not runs:
        raise UserError(
            f"{folder} holds no run folders (subfolders with metrics.jsonl or summary.json). Give the folder a "
            "sweep wrote, e.g. outputs/multiruns/<date>/<time>, whose numbered subfolders are its jobs."
        )
    return sorted(runs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _is_run(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def job_row(run: Path) -> dict:
    """One table row from a run folder's files."""
    summary = _read_json(run / "summary.json")
    rows = read_rows(run / "metrics.jsonl")
    train = [r for r in rows if _number(r.get("loss")) is not None]
    evals = [r for r in rows if _number(r.get("eval_loss")) is not None]
    last_train, last_eval = (train[-1] if train else {}), (evals[-1] if evals else {})
    peak = summary.get("cuda_peak_allocated_mb", summary.get("cpu_peak_rss_mb"))
    tasks = {k: _number(v) for row in evals for k, v in row.items() if _is_task_metric(k)}
    tasks.update({k: _number(v) for k, v in summary.items() if _is_task_metric(k)})
    return {
        **tasks,
        "job": run.name,
        "overrides": " ".join(job_overrides(run)),
        "status": summary.get("status", "running or killed" if rows else "not started"),
        "steps": summary.get("global_step", rows[-1].get("step") if rows else None),
        "train_loss": _number(last_train.get("loss")),
        "eval_loss": _number(summary.get("eval_loss", last_eval.get("eval_loss"))),
        # NLL is comparable across loss functions (a DFT loss is not on the NLL scale).
        "eval_nll": _number(summary.get("eval_nll", last_eval.get("eval_nll"))),
        "mean_token_accuracy": _number(last_train.get("mean_token_accuracy")),
        "eval_mean_token_accuracy": _number(summary.get("eval_mean_token_accuracy",
                                                        last_eval.get("eval_mean_token_accuracy"))),
        "entropy": _number(last_train.get("entropy")),
        "train_tokens_per_s": _number(summary.get("train_tokens_per_s")),
        "peak_memory_mb": _number(peak),
        "wall_time_s": _number(summary.get("wall_time_s")),
        "error": summary.get("error"),
    }


def _is_task_metric(key: str) -> bool:
    """A task score, eval_<task>/<metric> (the final one; `_before` values are in summary.json)."""
    return key.startswith("eval_") and "/" in key and not key.endswith("_before")


def task_columns(rows: list) -> list:
    """Every task metric any job has, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if _is_task_metric(k)))


def job_overrides(run: Path) -> list:
    """The command-line overrides that made this job (Hydra's record, else run_info.json's)."""
    hydra_file = run / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.load(hydra_file)]
    return list(_read_json(run / "run_info.json").get("overrides", []))


def shared_overrides(rows: list) -> list:
    """Overrides every job has (in the first job's order); none when there is a single job."""
    if len(rows) < 2:
        return []
    lists = [row["overrides"].split() for row in rows]
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def write_table(rows: list, out: Path) -> str:
    """report.csv and report.md (a column per task metric after the fixed ones); returns the markdown."""
    columns = [*COLUMNS, *task_columns(rows)]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "error"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    failures = [f"- job {row['job']}: {row['error']}" for row in rows if row.get("error")]
    markdown = "\n".join(lines) + ("\n\nFailed jobs:\n" + "\n".join(failures) if failures else "") + "\n"
    (out / "report.md").write_text(markdown)
    return markdown


def plot_curves(runs: list, labels: list, out: Path) -> list:
    """loss.png, nll.png and accuracy.png: every job's train (solid) and eval (dashed) curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, key in (("loss", "loss"), ("nll", "nll"), ("accuracy", "mean_token_accuracy")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (run, label) in enumerate(zip(runs, labels)):
            rows = read_rows(run / "metrics.jsonl")
            for prefix, style in (("", "-"), ("eval_", "--")):
                points = [(r["step"], _number(r.get(prefix + key))) for r in rows]
                points = [(s, v) for s, v in points if v is not None and not math.isnan(v)]
                if points:  # one color per job: its train and eval curves belong together
                    ax.plot(*zip(*points), style, color=f"C{i % 10}", label=f"{label} ({'eval' if prefix else 'train'})")
        ax.set(xlabel="step", ylabel=key, title=f"{key} per job (solid: train, dashed: eval)")
        if ax.lines:
            ax.legend(fontsize=7)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def plot_task_metrics(runs: list, labels: list, keys: list, out: Path) -> list:
    """eval_<task>_<metric>.png per task metric: every job's score at every evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (run, label) in enumerate(zip(runs, labels)):
            points = [(r["step"], _number(r.get(key))) for r in read_rows(run / "metrics.jsonl")]
            points = [(s, v) for s, v in points if v is not None and not math.isnan(v)]
            if points:
                ax.plot(*zip(*points), "o-", color=f"C{i % 10}", label=label)
        ax.set(xlabel="step", ylabel=key, title=f"{key} per job")
        if ax.lines:
            ax.legend(fontsize=7)
        path = out / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", key) + ".png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def report(folder: Path, out: Optional[Path] = None) -> str:
    runs = find_runs(folder)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    rows = [job_row(run) for run in runs]
    common = shared_overrides(rows)
    for row in rows:  # the table shows what varies; what every job shares is said once, above it
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in common)
    markdown = write_table(rows, out)
    if common:
        markdown = f"Every job: `{' '.join(common)}`\n\n" + markdown
        (out / "report.md").write_text(markdown)
    labels = [f"{row['job']}: {row['overrides'] or '(defaults)'}" for row in rows]
    plot_curves(runs, labels, out)
    plot_task_metrics(runs, labels, task_columns(rows), out)
    if len(runs) == 1 and runs[0] == folder:  # one run: what the fine-tune changed, example by example
        from sft_exp.evaluation.compare import changed_markdown

        changed = changed_markdown(folder)
        if changed:
            markdown += "\n## Task examples whose score changed\n\n" + changed + "\n"
            (out / "report.md").write_text(markdown)
    best = folder / "optimization_results.yaml"  # written by the Optuna sweeper
    if best.is_file():
        markdown += "\nOptuna:\n```\n" + best.read_text() + "```\n"
        (out / "report.md").write_text(markdown)
    return markdown


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _number(value) -> Optional[float]:
    """Numbers as floats; None for missing and non-numeric values ("nan" strings stay NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = "" if value is None else str(value)
    return re.sub(r"\|", r"\\|", text)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/multiruns/<date>/<time>) or a run folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the folder)")
    args = parser.parse_args(argv)
    try:
        markdown = report(args.folder, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote report.md, report.csv and the plots (loss, nll, accuracy, one per task metric) to {args.out or args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
