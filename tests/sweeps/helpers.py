"""A tiny sft_optuna sweep in a subprocess, and the study it leaves, read back with Optuna itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import REPO, TEST_ENV, run_sft, tiny_run

# 2 optimizer steps of 4 rows, eval loss only, no logger: about a second a job after the process starts.
TINY = tiny_run(steps=2, train_rows=16, save_steps=2)


def _sweep_args(name: str, overrides) -> list:
    """`python -m sft_exp`'s arguments for a sweep over the config `name` of sweeps/, with `overrides`."""
    return ["-m", "--config-dir", str(REPO / "sweeps"), "--config-name", name, *overrides]


def sweep_command(*overrides: str, name: str = "optuna_lr") -> list:
    """The whole command line of a sweep, for one started apart (Popen)."""
    return [sys.executable, "-m", "sft_exp", *_sweep_args(name, overrides)]


def sweep(sweep_dir: Path, *overrides: str, name: str = "optuna_lr", timeout: float = 300):
    return run_sft(*_sweep_args(name, [*TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]), timeout=timeout)


def trials(sweep_dir: Path, study_name: str = "sft_lr", storage=None) -> list:
    import optuna

    from sft_exp.sweeps.storage import open_storage, resolve

    storage = open_storage(resolve(storage, sweep_dir))
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)


def states(sweep_dir: Path, **kwargs) -> dict:
    return {t.number: t.state.name for t in trials(sweep_dir, **kwargs)}


def summary(folder: Path) -> dict:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def job_folders(sweep_dir: Path) -> list:
    return sorted(int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


__all__ = ["TEST_ENV", "sweep", "sweep_command", "trials", "states", "summary", "job_folders"]
