"""What Hydra says about the job this process runs: its overrides, and whether it is one job of a sweep."""

from __future__ import annotations

from pathlib import Path


def overrides() -> list:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def multirun_hydra_config():
    """Hydra's config of this job when it runs inside a sweep (`-m`), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get()
    return None


def job_name() -> str | None:
    """In a sweep, a job's tracker name is its overrides (e.g. loss=dft,optimizer.lr=0.0003)."""
    job_overrides = overrides()
    return ",".join(job_overrides) if job_overrides and multirun_hydra_config() is not None else None


def sweep_group() -> str | None:
    hydra_cfg = multirun_hydra_config()
    return Path(hydra_cfg.sweep.dir).as_posix() if hydra_cfg is not None else None


def resume_command(run_dir: Path):
    """This process's command line, to paste, with the run folder and resume_from_checkpoint=true. In a sweep
    (-m), the sweep's command with its folder, which continues every job from where it stopped (a relaunch
    into a job's folder resumes it); None in an Optuna sweep, whose sweeper prints its own."""
    import shlex
    import sys

    sweep = multirun_hydra_config()
    if sweep is None:
        kept = [arg for arg in sys.argv[1:] if not arg.startswith(("hydra.run.dir=", "resume_from_checkpoint="))]
        return shlex.join(["python", "-m", "sft_exp", *kept, f"hydra.run.dir={run_dir}", "resume_from_checkpoint=true"])
    if "sft_exp_sweeper" in str(sweep.sweeper.get("_target_", "")):  # hydra/sweeper=sft_optuna
        return None
    kept = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.sweep.dir=")]
    return shlex.join(["python", "-m", "sft_exp", *kept, f"hydra.sweep.dir={Path(sweep.sweep.dir).resolve()}"])
