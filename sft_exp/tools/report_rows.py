"""One report row from a run folder (summary.json, metrics.jsonl, run_info.json, .hydra/overrides.yaml).

Each name means one thing wherever it appears (summary.json, metrics.jsonl, report.md, report.csv,
replicates.csv): `train_loss` is the mean training loss per optimizer step over the whole run (every segment of
a resumed run); `last_window_*` are the last logging window's values (`last_window` says its steps), which
metrics.jsonl logs as `loss`, `mean_token_accuracy`, `entropy` per window; `eval_*` are the last evaluation's.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from sft_exp import atomic
from sft_exp.run.scores import whole_run_loss

# Settings that say how a run was launched, not what it is: never shown as a difference between runs.
NOT_CONFIGURATION = ("resume_from_checkpoint", "hydra.run.dir", "hydra.sweep.dir", "run_dir")
LAST_WINDOW = ("loss", "mean_token_accuracy", "entropy")


def read_json(path: Path) -> dict:
    return atomic.read_json(path, invalid_ok=True)


def number(value) -> Optional[float]:
    """Numbers as floats; None for missing and non-numeric values ("nan" strings stay NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def is_configuration(override: str) -> bool:
    return re.sub(r"^[+~]+", "", override).split("=", 1)[0] not in NOT_CONFIGURATION


def job_overrides(run: Path) -> list:
    """The command-line overrides that made this job (Hydra's record, else run_info.json's), without the ones
    that only say how it was launched (a resume, its folder)."""
    hydra_file = run / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        from omegaconf import OmegaConf

        overrides = [str(o) for o in OmegaConf.load(hydra_file)]
    else:
        overrides = list(read_json(run / "run_info.json").get("overrides", []))
    return [o for o in overrides if is_configuration(o)]


def is_task_metric(key: str) -> bool:
    """A task score, eval_<task>/<metric> (the final one; `_before` values are in summary.json)."""
    return key.startswith("eval_") and "/" in key and not key.endswith("_before")


def last_window(summary: dict, rows: list) -> dict:
    """last_window_* and last_window ("1491-1500"): from summary.json, else from metrics.jsonl's last train row."""
    if "last_window_steps" in summary:
        first, last = summary["last_window_steps"]
        return {
            "last_window": f"{first}-{last}",
            **{f"last_window_{k}": number(summary.get(f"last_window_{k}")) for k in LAST_WINDOW},
        }
    train = [r for r in rows if number(r.get("loss")) is not None]
    if not train:
        return {}
    start = train[-2]["step"] + 1 if len(train) > 1 else 1
    return {
        "last_window": f"{start}-{train[-1]['step']}",
        **{f"last_window_{k}": number(train[-1].get(k)) for k in LAST_WINDOW},
    }


def contamination_cells(info: dict) -> dict:
    """contaminated_rows (a number) and contamination (per eval group) from run_info.json."""
    from sft_exp.data.statistics import summary_counts

    found = (info.get("data_stats") or {}).get("contamination")
    if not found:
        return {}
    if found.get("mode") == "off":
        return {"contamination": "not checked"}
    return {
        "contaminated_rows": found["rows"],
        "contamination": f"{found['rows']} of {found['rows_checked']} ({summary_counts(found)})",
    }


def job_row(run: Path, root: Optional[Path] = None) -> dict:
    """One table row from a run folder (`job`: its path under the sweep folder, e.g. 3 or 3/seed-1)."""
    summary, info = read_json(run / "summary.json"), read_json(run / "run_info.json")
    rows = atomic.read_jsonl(run / "metrics.jsonl")
    evals = [r for r in rows if number(r.get("eval_loss")) is not None]
    last_eval = evals[-1] if evals else {}
    peak = summary.get("cuda_peak_allocated_mb", summary.get("cpu_peak_rss_mb"))
    tasks = {k: number(v) for row in rows for k, v in row.items() if is_task_metric(k)}
    tasks.update({k: number(v) for k, v in summary.items() if is_task_metric(k)})
    train_loss = summary["train_loss"] if "train_loss" in summary else whole_run_loss(rows)
    return {
        **tasks,
        "job": run.relative_to(root).as_posix() if root is not None and run != root else run.name,
        "overrides": " ".join(job_overrides(run)),
        "status": summary.get("status", "running or killed" if rows else "not started"),
        "steps": summary.get("global_step", rows[-1].get("step") if rows else None),
        "train_loss": number(train_loss),
        "eval_loss": number(summary.get("eval_loss", last_eval.get("eval_loss"))),
        # NLL is comparable across loss functions (a DFT loss is not on the NLL scale).
        "eval_nll": number(summary.get("eval_nll", last_eval.get("eval_nll"))),
        "eval_mean_token_accuracy": number(
            summary.get("eval_mean_token_accuracy", last_eval.get("eval_mean_token_accuracy"))
        ),
        **last_window(summary, rows),
        "train_tokens_per_s": number(summary.get("train_tokens_per_s")),
        "peak_memory_mb": number(peak),
        "wall_time_s": number(summary.get("wall_time_s")),
        **contamination_cells(info),
        "error": summary.get("error"),
    }


def cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = "" if value is None else str(value)
    return re.sub(r"\|", r"\\|", text)
