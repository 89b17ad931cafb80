"""A launch into a folder that already holds a run never destroys it.

`python -m sft_exp ... hydra.run.dir=DIR` into a DIR with a run (a complete checkpoint, or a finished run):
- the same settings: the run continues from its last complete checkpoint (or, complete, trains nothing);
- other settings: the launch stops (exit 2) naming what differs, and DIR is left as it was: its checkpoints,
  resolved_config.yaml, Hydra's .hydra/ files and its log. Hydra rewrites .hydra/ at every launch, before
  sft_exp runs: `hold_hydra_records` holds those writes back until the launch is accepted.
`resume_from_checkpoint=true` (or a path) continues with changed settings, recorded in run_info.json, as before;
a SLURM job that was requeued continues by itself. The decision is rank 0's, on every rank.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_json
from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG = "resolved_config.yaml"
SHOWN_CHANGES = 8


class RunFolderTaken(ConfigError):
    """The launch would overwrite another run's folder; nothing there was touched (a sweep job that gets it
    must not mark that run failed either)."""


@dataclass
class Relaunch:
    resume_from: Optional[str] = None  # the checkpoint a relaunch with the same settings continues from
    objective: Optional[float] = None  # set when the folder's run is complete: nothing is left to train
    refusal: Optional[str] = None  # why this launch stops


def holds_run(folder: Path) -> bool:
    return (folder / CONFIG).is_file() or any((folder / "checkpoints").glob("checkpoint-*"))


def decide(cfg, run_dir: Path) -> Relaunch:
    """What a launch into `run_dir` does with the run it may hold (rank 0 decides for every rank): the
    checkpoint to resume, the objective of a complete run, or a RunFolderTaken error."""
    from sft_exp.run import distributed

    decision = distributed.decided_on_rank_zero(lambda: _decide(cfg, run_dir))
    if distributed.rank() == 0:
        if decision.refusal or decision.objective is not None:
            leave_as_it_was(run_dir)
        else:
            write_held_records(run_dir)
    if decision.refusal:
        raise RunFolderTaken(decision.refusal)
    return decision


def _decide(cfg, run_dir: Path) -> Relaunch:
    from sft_exp.plain import plain
    from sft_exp.run.distributed import requeued_job
    from sft_exp.run.folder import config_changes
    from sft_exp.run.hydra_job import multirun_hydra_config

    asked = cfg.get("resume_from_checkpoint")
    if not holds_run(run_dir) or asked not in (None, False) or (asked is None and requeued_job()):
        return Relaunch()  # a fresh folder, or a resume as asked
    summary = read_json(run_dir / "summary.json")
    finished = summary.get("status") in ("completed", "pruned")
    saved = any((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    if not finished and not saved:
        # An earlier start that saved nothing to continue from (a crash before the first checkpoint, a sweep
        # trial its sweeper runs again): nothing there is lost by starting afresh.
        log.info("%s holds an earlier start that saved no checkpoint: this launch starts afresh there", run_dir)
        return Relaunch()
    folder_key = "hydra.sweep.dir" if multirun_hydra_config() is not None else "hydra.run.dir"
    afresh = f"To start afresh, launch into a new folder (leave out {folder_key}, or {folder_key}=<new folder>)"
    if asked is False:
        return Relaunch(
            refusal=f"resume_from_checkpoint=false, but {run_dir} holds a run and sft_exp never "
            f"overwrites one; nothing there was changed. {afresh}."
        )
    if not (run_dir / CONFIG).is_file():
        return Relaunch(
            refusal=f"{run_dir} holds checkpoints but no {CONFIG} to compare this launch with; nothing "
            f"there was changed. {afresh}; to continue it, add resume_from_checkpoint=true."
        )
    changes = config_changes(run_dir, plain(cfg))
    if changes:
        shown = "; ".join(f"{key}: {was} -> {now}" for key, (was, now) in list(changes.items())[:SHOWN_CHANGES])
        more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
        go_on = "; to continue that run with these settings, add resume_from_checkpoint=true" if saved else ""
        return Relaunch(
            refusal=f"{run_dir} holds a run with other settings ({shown}{more}); nothing there was "
            f"changed. {afresh}{go_on}."
        )
    if finished:
        log.info(
            "%s holds this run (same settings), %s: nothing to train (%s)",
            run_dir,
            summary["status"],
            afresh.lower().rstrip("."),
        )
        return Relaunch(objective=float(summary.get(cfg.objective, math.nan)))
    from sft_exp.training.checkpoints import latest_complete_checkpoint  # loads torch: only here

    checkpoint = latest_complete_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:  # each one named in a warning above
        return Relaunch(
            refusal=f"{run_dir} holds checkpoints, none of them complete; nothing there was changed. {afresh}."
        )
    log.info("%s holds this run (same settings): resuming from %s (%s)", run_dir, checkpoint, afresh.lower())
    return Relaunch(resume_from=str(checkpoint))


# ----------------------------------------------------------------------------- Hydra's records, held back
HELD: dict[Path, dict] = {}  # run folder -> {(.hydra folder, file name): text} Hydra wrote at this launch
LOG_SIZES: dict[Path, int] = {}  # the folder's log files as they were before this launch


def hold_hydra_records() -> None:
    """Hydra's .hydra/ files of a job whose folder holds a run wait for `decide` (installed by the CLI)."""
    from sft_exp import compat

    compat.wrap_hydra_save_config(_holding)


def _holding(save_config):
    def held_save_config(cfg, filename, output_dir):
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        folder = Path(HydraConfig.get().runtime.output_dir).resolve()
        if not holds_run(folder):
            return save_config(cfg, filename, output_dir)
        if folder not in HELD:
            LOG_SIZES.update({path: path.stat().st_size for path in _log_files(folder)})
        HELD.setdefault(folder, {})[(Path(output_dir), filename)] = OmegaConf.to_yaml(cfg)

    return held_save_config


def write_held_records(run_dir: Path) -> None:
    """The launch goes on in `run_dir`: Hydra's files of this launch are written, as Hydra would have."""
    for (folder, name), text in HELD.pop(run_dir.resolve(), {}).items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def leave_as_it_was(run_dir: Path) -> None:
    """The launch stops (or has nothing to do): Hydra's files of this launch are dropped, and its log file
    is cut back to what it held and closed, so this launch leaves nothing in the folder."""
    import logging as logging_module

    HELD.pop(run_dir.resolve(), None)
    root = logging_module.getLogger()
    for handler in list(root.handlers):
        path = Path(getattr(handler, "baseFilename", "") or "/")
        if path in LOG_SIZES:
            root.removeHandler(handler)
            handler.close()
            with open(path, "r+b") as f:
                f.truncate(LOG_SIZES.pop(path))


def _log_files(folder: Path) -> list[Path]:
    import logging as logging_module

    paths = [Path(getattr(h, "baseFilename", "") or "/") for h in logging_module.getLogger().handlers]
    return [path for path in paths if path.parent == folder and path.is_file()]
