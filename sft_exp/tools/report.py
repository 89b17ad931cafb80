"""`python -m sft_exp.report <multirun folder>`: one table and one picture for a sweep;
`python -m sft_exp.report RUN_A RUN_B ...`: runs side by side (the configs that differ, metrics, plots).

Reads the run folders alone (metrics.jsonl, summary.json, run_info.json, .hydra/overrides.yaml): no W&B needed.
Writes into the multirun folder (or --out; several folders: outputs/reports/<date>/<time>):
  report.md, report.csv   one row per job: overrides, whole-run train loss, eval loss, accuracy, the last logging
                          window's values, tokens/s, peak memory, wall time, the contamination count, status;
                          what each score rests on (n, file)
  loss.png, nll.png, accuracy.png   train curves (lines) and evaluations (markers) of every job
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
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

from sft_exp.errors import UserError
from sft_exp.tools.report_plots import optuna_plots, plot_curves, plot_task_metrics
from sft_exp.tools.report_rows import cell as _cell
from sft_exp.tools.report_rows import is_task_metric as _is_task_metric
from sft_exp.tools.report_rows import job_row, read_json

COLUMNS = (
    "job",
    "overrides",
    "status",
    "steps",
    "train_loss",
    "eval_loss",
    "eval_nll",
    "eval_mean_token_accuracy",
    "last_window",
    "last_window_loss",
    "last_window_mean_token_accuracy",
    "last_window_entropy",
    "train_tokens_per_s",
    "peak_memory_mb",
    "wall_time_s",
    "contaminated_rows",
    "contamination",
)
RUN_MARKERS = ("metrics.jsonl", "summary.json", "resolved_config.yaml", ".hydra/config.yaml")
LEGEND = """What the columns mean:
- train_loss: the mean training loss per optimizer step over the whole run (every segment of a resumed run)
- last_window_*: the last logging window's values (its steps: last_window), as metrics.jsonl logs each window
- eval_*: the last evaluation; before training: summary.json's *_before
- train_tokens_per_s, wall_time_s: over every segment of a resumed run (its tokens over its training time)
- contaminated_rows, contamination: training rows sharing an n-gram with an evaluation text, or equal to a held-out
  row, per evaluation (run_info.json data_stats.contamination; the rows: contamination.jsonl)"""


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


def task_columns(rows: list) -> list:
    """Every task metric any job has, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if _is_task_metric(k)))


def shared_overrides(rows: list) -> list:
    """Overrides every job has (in the first job's order); none when there is a single job."""
    if len(rows) < 2:
        return []
    lists = [row["overrides"].split() for row in rows]
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def write_table(rows: list, out: Path) -> str:
    """report.csv (a column per task metric after the fixed ones); returns the same table in markdown."""
    columns = [*COLUMNS, *task_columns(rows)]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "error"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    failures = [f"- job {row['job']}: {row['error']}" for row in rows if row.get("error")]
    return "\n".join(lines) + ("\n\nFailed jobs:\n" + "\n".join(failures) if failures else "") + "\n"


def plot_labels(rows: list) -> list:
    """Each job's legend in the plots: its name and what makes it differ (never how it was launched)."""
    return [f"{row['job']}: {row['overrides'] or '(defaults)'}" for row in rows]


def basis_section(runs: list, rows: list) -> str:
    """What each score rests on (run_info.json `evaluations`): n and source, once when every job shares them."""
    from sft_exp.run.scores import EVAL_SET, record_cells

    found: dict = {}  # evaluation -> {(n, source): [jobs]}
    for run, row in zip(runs, rows):
        for name, record in (read_json(run / "run_info.json").get("evaluations") or {}).items():
            found.setdefault(name, {}).setdefault(record_cells(record), []).append(row["job"])
    if not found:
        return ""
    lines = ["## What the scores rest on", "", "| scores | n | source | jobs |", "|---|---|---|---|"]
    for name, by_basis in found.items():
        scores = "eval_loss, eval_nll, eval_mean_token_accuracy, eval_entropy" if name == EVAL_SET else f"eval_{name}/*"
        for (n, source), jobs in by_basis.items():
            who = "all" if len(jobs) == len(rows) else ", ".join(jobs)
            lines.append(f"| {scores} | {n} | `{source}` | {who} |")
    return "\n".join(lines) + "\n"


def report(folder: Path, out: Optional[Path] = None, storage: Optional[str] = None) -> str:
    runs = find_runs(folder)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    rows = [job_row(run, folder) for run in runs]
    common = shared_overrides(rows)
    for row in rows:  # the table shows what varies; what every job shares is said once, above it
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in common)
    parts = [f"Every job: `{' '.join(common)}`\n"] if common else []
    mixed = mixed_losses(runs)
    if mixed:  # a DFT loss is not on the NLL scale: the eval_loss column does not compare across them
        parts.append(
            f"Jobs train different losses ({', '.join(mixed)}): each eval_loss is its job's own loss; "
            "compare them by eval_nll.\n"
        )
    parts += [write_table(rows, out), LEGEND + "\n", basis_section(runs, rows)]
    labels = plot_labels(rows)
    plot_curves(runs, labels, out)
    plot_task_metrics(runs, labels, task_columns(rows), out)
    if len(runs) == 1 and runs[0] == folder:  # one run: what the fine-tune changed, example by example
        from sft_exp.evaluation.compare import changed_markdown

        changed = changed_markdown(folder)
        parts.append("## Task examples whose score changed\n\n" + changed + "\n" if changed else "")
    study = _study_info(folder)
    parts.append(replicate_section(rows, folder, out, study))
    best = folder / "optimization_results.yaml"  # written by the sft_optuna sweeper
    if best.is_file():
        parts.append("Optuna:\n```\n" + best.read_text() + "```\n" + optuna_plots(study, out, storage))
    markdown = "\n".join(part for part in parts if part)
    (out / "report.md").write_text(markdown)
    return markdown


def config_differences(runs: list) -> dict:
    """{dotted key: [each run's value]} for every resolved_config.yaml value that is not the same in all runs
    (where a run was launched from is not a difference: its folder, a resume)."""
    from omegaconf import OmegaConf

    from sft_exp.plain import dotted
    from sft_exp.tools.report_rows import is_configuration

    configs = []
    for run in runs:
        path = run / "resolved_config.yaml"
        flat = dotted(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else {}
        home = flat.get("run_dir")
        configs.append(
            {
                k: v.replace(home, "<run folder>") if isinstance(v, str) and home else v
                for k, v in flat.items()
                if is_configuration(k)
            }
        )
    keys = sorted(set().union(*configs)) if configs else []
    same = lambda key: len({json.dumps(c.get(key, "(unset)"), sort_keys=True, default=str) for c in configs}) == 1  # noqa: E731
    return {key: [c.get(key, "(unset)") for c in configs] for key in keys if not same(key)}


def compare(folders: list, out: Path) -> str:
    """Runs side by side: the configs that differ, the metrics table, what the scores rest on, the plots."""
    runs = [run for folder in folders for run in find_runs(folder)]
    root = Path(os.path.commonpath([str(run.resolve()) for run in runs]))
    out.mkdir(parents=True, exist_ok=True)
    rows = [job_row(run.resolve(), root) for run in runs]
    names = [row["job"] for row in rows]
    differences = config_differences(runs)
    common = shared_overrides(rows)
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in common)
    parts = [f"# {len(runs)} runs compared\n", "| job | folder |\n|---|---|"]
    parts += [f"| {name} | `{run}` |" for name, run in zip(names, runs)]
    parts += ["\n## Configs that differ\n"]
    if differences:
        parts += ["| key | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        parts += [f"| {key} | " + " | ".join(_cell(v) for v in values) + " |" for key, values in differences.items()]
    else:
        parts.append("None: the resolved configs are the same (the runs differ in code, data or machine).")
    parts += ["\n## Metrics\n", write_table(rows, out), LEGEND + "\n", basis_section(runs, rows)]
    labels = [name + ": " + " ".join(f"{k.rsplit('.', 1)[-1]}={values[i]}" for k, values in list(differences.items())[:3])
              for i, name in enumerate(names)]  # fmt: skip
    plot_curves(runs, labels, out)
    plot_task_metrics(runs, labels, task_columns(rows), out)
    markdown = (
        "\n".join(part for part in parts if part)
        + "\nPlots: loss.png, nll.png, accuracy.png"
        + "".join(f", {re.sub(r'[^A-Za-z0-9_.@-]+', '_', key)}.png" for key in task_columns(rows))
        + "\n"
    )
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
    metrics = list(
        dict.fromkeys(
            [objective, "eval_loss", "eval_nll", "eval_mean_token_accuracy", "train_loss", *task_columns(rows)]
        )
    )
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
    lines = [
        "## Replicates: configs run under several seeds",
        "",
        "mean ± std [95% t interval of the mean] over the completed seeds of each config",
        "",
        "| config | n | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
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


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="folder",
        help="a multirun folder (outputs/multiruns/<date>/<time>) or a run folder; several: compared",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: the folder; several: outputs/reports/<date>/<time>)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="the study's storage URL for the Optuna plots when study.yaml's (password removed) cannot open it",
    )
    args = parser.parse_args(argv)
    out = args.out or (
        args.folders[0] if len(args.folders) == 1 else Path("outputs/reports") / time.strftime("%Y-%m-%d/%H-%M-%S")
    )
    try:
        if len(args.folders) == 1:
            markdown = report(args.folders[0], args.out, args.storage)
        else:
            markdown = compare(args.folders, out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote report.md, report.csv and the plots (loss, nll, accuracy, one per task metric) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
