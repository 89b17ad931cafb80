"""`python -m sft_exp.report <multirun folder>`: one table and one picture for a sweep.

Reads the run folders alone (metrics.jsonl, summary.json, .hydra/overrides.yaml): no W&B needed.
Writes into the multirun folder (or --out):
  report.md, report.csv   one row per job: overrides, final train/eval loss, accuracy, entropy,
                          tokens/s, peak memory, wall time, status
  loss.png, nll.png, accuracy.png   train (solid) and eval (dashed) curves of every job
  eval_<task>_<metric>.png          each task score (evals) of every job across steps
  replicates.csv, and in report.md   configs run under several seeds (jobs that differ only in `seed`):
                          mean, std, n and 95% interval of every metric, and whether the best config's
                          lead is beyond seed noise (sft_exp/sweeps/replicates.py says which test)
  optuna_history.png, optuna_importances.png   for an sft_optuna sweep (its study.yaml names the study)
For a single run folder, report.md also lists the examples whose task score changed between the
first evaluation (before training) and the last.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from sft_exp.errors import UserError
from sft_exp.atomic import read_json, read_jsonl

COLUMNS = ("job", "overrides", "status", "steps", "train_loss", "eval_loss", "eval_nll", "mean_token_accuracy",
           "eval_mean_token_accuracy", "entropy", "train_tokens_per_s", "peak_memory_mb", "wall_time_s")
RUN_MARKERS = ("metrics.jsonl", "summary.json", "resolved_config.yaml", ".hydra/config.yaml")


def find_runs(folder: Path) -> list:
    """The run folders of a multirun folder (numbered jobs first, in order), or the folder itself if it is a run."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder. Give a multirun folder, e.g. outputs/multiruns/<date>/<time>.")
    if _is_run(folder):
        return [folder]
    runs = []
    for p in folder.iterdir():  # a job folder, or a trial folder holding one run per seed (<trial>/seed-<s>)
        if p.is_dir():
            runs += [p] if _is_run(p) else [c for c in p.iterdir() if c.is_dir() and _is_run(c)]
    if not runs:
        raise UserError(
            f"{folder} holds no run folders (subfolders with metrics.jsonl or summary.json). Give the folder a "
            "sweep wrote, e.g. outputs/multiruns/<date>/<time>, whose numbered subfolders are its jobs."
        )
    def order(p: Path):
        top = p if p.parent == folder else p.parent
        return (not top.name.isdigit(), int(top.name) if top.name.isdigit() else 0, top.name, p.name)

    return sorted(runs, key=order)


def _is_run(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def job_row(run: Path, root: Optional[Path] = None) -> dict:
    """One table row from a run folder's files (`job`: its path under the sweep folder, e.g. 3 or 3/seed-1)."""
    summary = _read_json(run / "summary.json")
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if _number(r.get("loss")) is not None]
    evals = [r for r in rows if _number(r.get("eval_loss")) is not None]
    last_train, last_eval = (train[-1] if train else {}), (evals[-1] if evals else {})
    peak = summary.get("cuda_peak_allocated_mb", summary.get("cpu_peak_rss_mb"))
    tasks = {k: _number(v) for row in evals for k, v in row.items() if _is_task_metric(k)}
    tasks.update({k: _number(v) for k, v in summary.items() if _is_task_metric(k)})
    return {
        **tasks,
        "job": run.relative_to(root).as_posix() if root is not None and run != root else run.name,
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


def mixed_losses(runs: list) -> list:
    """The loss classes of the jobs (from resolved_config.yaml) when they are not all the same, else []."""
    from omegaconf import OmegaConf

    found = set()
    for run in runs:
        resolved = run / "resolved_config.yaml"
        if resolved.is_file():
            target = OmegaConf.select(OmegaConf.load(resolved), "loss._target_", default=None)
            if target:
                found.add(str(target).rsplit(".", 1)[-1])
    return sorted(found) if len(found) > 1 else []


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
            rows = read_jsonl(run / "metrics.jsonl")
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
            points = [(r["step"], _number(r.get(key))) for r in read_jsonl(run / "metrics.jsonl")]
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


def report(folder: Path, out: Optional[Path] = None, storage: Optional[str] = None) -> str:
    runs = find_runs(folder)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    rows = [job_row(run, folder) for run in runs]
    common = shared_overrides(rows)
    for row in rows:  # the table shows what varies; what every job shares is said once, above it
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in common)
    markdown = write_table(rows, out)
    mixed = mixed_losses(runs)
    if mixed:  # a DFT loss is not on the NLL scale: the eval_loss column does not compare across them
        markdown = (f"Jobs train different losses ({', '.join(mixed)}): each eval_loss is its job's own loss; "
                    "compare them by eval_nll.\n\n" + markdown)
        (out / "report.md").write_text(markdown)
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
    study = _study_info(folder)
    replicates = replicate_section(rows, folder, out, study)
    if replicates:
        markdown += "\n" + replicates
        (out / "report.md").write_text(markdown)
    best = folder / "optimization_results.yaml"  # written by the sft_optuna sweeper
    if best.is_file():
        markdown += "\nOptuna:\n```\n" + best.read_text() + "```\n"
        markdown += optuna_plots(study, out, storage)
        (out / "report.md").write_text(markdown)
    return markdown


def _study_info(folder: Path) -> dict:
    """study.yaml of an sft_optuna sweep (objectives, directions, storage), or {}."""
    path = folder / "study.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def _objective(rows: list, study: dict, runs_objective: Optional[str]) -> tuple:
    """(objective, maximize): the sweep's own, else the jobs' `objective` (losses minimized, scores maximized)."""
    if study.get("objectives"):
        return study["objectives"][0], study["directions"][0] == "maximize"
    objective = runs_objective or "eval_loss"
    return objective, not any(word in objective for word in ("loss", "nll", "perplexity"))


def replicate_section(rows: list, folder: Path, out: Path, study: dict) -> str:
    """replicates.csv and a markdown table: every config run under several seeds, mean/std/n/95% interval
    of each metric, then whether the best config's lead over the runner-up is beyond seed noise."""
    from sft_exp.sweeps import replicates

    grouped = replicates.groups(rows)
    if not grouped:
        return ""
    objective, maximize = _objective(rows, study, _runs_objective(folder, rows))
    metrics = list(dict.fromkeys([objective, "eval_loss", "eval_nll", "eval_mean_token_accuracy", "train_loss",
                                  *task_columns(rows)]))
    metrics = [m for m in metrics if any(r.get(m) is not None for rs in grouped.values() for r in rs)]
    table, records = [], []
    for config, members in grouped.items():
        cells = [config or "(defaults)", str(len(members))]
        record = {"config": config, "n": len(members), "jobs": " ".join(r["job"] for r in members)}
        for metric in metrics:
            stats = replicates.summarize([r.get(metric) for r in members])
            record.update({f"{metric} {k}": v for k, v in stats.items() if k != "n"})
            cells.append(_interval_cell(stats))
        table.append(cells)
        records.append(record)
    with (out / "replicates.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in records for k in r)), restval="")
        writer.writeheader()
        writer.writerows(records)
    lines = ["## Replicates: configs run under several seeds", "",
             "mean ± std [95% t interval of the mean] over the completed seeds of each config", "",
             "| config | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in table]
    text = replicates.verdict(grouped, objective, maximize)
    return "\n".join(lines) + "\n\n" + (text or "One config only: nothing to compare.") + "\n"


def _runs_objective(folder: Path, rows: list) -> Optional[str]:
    for row in rows:
        path = folder / row["job"] / "resolved_config.yaml"
        if path.is_file():
            from omegaconf import OmegaConf

            return OmegaConf.load(path).get("objective")
    return None


def _interval_cell(stats: dict) -> str:
    if not stats.get("n"):
        return ""
    if stats["n"] == 1:
        return f"{stats['mean']:.4g}"
    return f"{stats['mean']:.4g} ± {stats['std']:.2g} [{stats['ci_low']:.4g}, {stats['ci_high']:.4g}]"


def optuna_plots(study: dict, out: Path, storage: Optional[str] = None) -> str:
    """optuna_history.png and optuna_importances.png from the study itself; a line saying why when not."""
    if not study:
        return ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna
        from optuna.visualization import matplotlib as optuna_plots_lib

        from sft_exp.sweeps.storage import open_storage

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        loaded = optuna.load_study(study_name=study["study_name"], storage=open_storage(storage or study["storage"]))
    except Exception as e:  # noqa: BLE001  optuna missing, or a database with a password: say so, keep the report
        return f"\nOptuna plots skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} " \
               "(give the storage with --storage)\n"
    lines = []
    for name, plot in (("optuna_history", optuna_plots_lib.plot_optimization_history),
                       ("optuna_importances", optuna_plots_lib.plot_param_importances)):
        try:
            kwargs = {"target_name": study["objectives"][0]} if len(study.get("directions", [])) == 1 else {
                "target": lambda t: t.values[0], "target_name": study["objectives"][0]}
            with warnings.catch_warnings():  # matplotlib's "no artists with labels" for a study without a legend
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(loaded, **kwargs)
            ax.figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            lines.append(f"![{name}]({name}.png)")
        except Exception as e:  # noqa: BLE001  e.g. importances need two completed trials
            lines.append(f"{name}.png skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return "\n" + "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    try:
        return read_json(path)
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
    parser.add_argument("--storage", default=None,
                        help="the study's storage URL for the Optuna plots when study.yaml's (password removed) cannot open it")
    args = parser.parse_args(argv)
    try:
        markdown = report(args.folder, args.out, args.storage)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote report.md, report.csv and the plots (loss, nll, accuracy, one per task metric) to {args.out or args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
