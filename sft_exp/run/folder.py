"""The files that make a run folder self-describing: resolved_config.yaml, run_info.json, summary.json."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from sft_exp.atomic import read_json, write_json
from sft_exp.plain import dotted

PACKAGES = (
    "sft_exp",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "tokenizers",
    "peft",
    "trl",
    "hydra-core",
    "omegaconf",
    "wandb",
    "numpy",
)


def write_resolved_config(resolved: dict, run_dir: Path) -> None:
    """The config with every interpolation resolved (asset paths, ${seed}, Hydra's output dir): what
    reproduce re-runs."""
    OmegaConf.save(OmegaConf.create(resolved), run_dir / "resolved_config.yaml")


# Settings that differ between a run and its resume by design (the run recorder's `resume` follows it).
_RESUME_KEYS = ("resume_from_checkpoint", "callbacks.run_recorder.resume")


def resume_record(run_dir: Path, resolved: dict, resumed_from: str) -> list:
    """run_info.json's `resumes` with this resume added: its checkpoint and the settings it changed against
    the run folder's resolved_config.yaml (read before it is rewritten). A resume that changes settings
    may make a run that no straight run reproduces; reproduce --verify says so."""
    earlier = read_json(run_dir / "run_info.json").get("resumes", [])
    return [*earlier, {"from": resumed_from, "changed": config_changes(run_dir, resolved)}]


def config_changes(run_dir: Path, resolved: dict) -> dict:
    """dotted key -> [the run folder's value, `resolved`'s] for every setting that differs from the folder's
    resolved_config.yaml, but those a resume changes by design; the folder's own path where it moved."""
    config_file = run_dir / "resolved_config.yaml"
    before = dotted(OmegaConf.to_container(OmegaConf.load(config_file))) if config_file.is_file() else {}
    after = dotted(resolved)
    moved_from, moved_to = before.get("run_dir"), after.get("run_dir")
    if isinstance(moved_from, str) and isinstance(moved_to, str):  # a run folder moved before its resume
        before = {k: v.replace(moved_from, moved_to) if isinstance(v, str) else v for k, v in before.items()}
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and key not in _RESUME_KEYS
    }


CONTAMINATION_FILE = "contamination.jsonl"


def write_contamination(run_dir: Path, matches: list) -> None:
    """contamination.jsonl: each training row found in an evaluation text (file, row, turn, eval item, n-gram);
    run_info.json's data_stats.contamination has the counts. No file when there is nothing to list."""
    from sft_exp.atomic import write_jsonl

    path = run_dir / CONTAMINATION_FILE
    if matches:
        write_jsonl(path, matches, ensure_ascii=False)
    elif path.is_file():
        path.unlink()  # an earlier run in this folder


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(where: Path) -> dict:
    """Commit and dirty flag of the checkout sft_exp runs from (None outside a git checkout)."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_run_info(
    run_dir: Path, *, seed: int, data_fingerprint: str, data_stats: dict, overrides: list, extra: Optional[dict] = None
) -> dict:
    info = {
        "versions": package_versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "seed": seed,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device_description(),
        "command": [sys.executable, *sys.argv],
        "overrides": list(overrides),
        "data_fingerprint": data_fingerprint,
        "data_stats": data_stats,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json(run_dir / "run_info.json", info)
    return info


def peak_memory_mb() -> dict:
    """Peak memory of this process: CUDA allocator peak where there is a GPU, and the CPU resident peak."""
    import resource

    import torch

    peak = {"cpu_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Record a job's failure in its summary.json (merged into what train.run wrote), so a sweep report shows it."""
    path = Path(run_dir) / "summary.json"
    summary = read_json(path)
    summary.update(status="failed", error=f"{type(error).__name__}: {error}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary)


def finish_run(run_dir: Path, summary: dict, loggers: list) -> None:
    """summary.json, then every tracker's summary and end (rank 0, also when training failed)."""
    import logging

    write_json(run_dir / "summary.json", summary)
    for logger in loggers:
        logger.log_summary(summary)
        logger.finish(summary.get("status", "failed"))
    logging.getLogger("sft_exp.train").info("run folder: %s", run_dir)
