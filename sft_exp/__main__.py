"""`python -m sft_exp [overrides]`: compose the config with Hydra and run one training job.

`python -m sft_exp <tool> ...` runs one of the tools instead (evaluate, export, preview, report, reproduce,
import_recipe; sft_exp.tools.TOOLS); the `sft-exp` console script is the same command.

`python -m sft_exp -m ...` runs a sweep: there a failed job is logged, marked failed in its
summary.json, and the sweep goes on (the basic sweeper gets NaN; Optuna records a failed trial).
"""

import logging
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import sft_exp.config  # noqa: F401  registers the schemas and the ${asset:...} resolver
from sft_exp.cli_errors import install_for_hydra_main
from sft_exp.errors import TrainingInterrupted, UserError
from sft_exp.paths import config_dir
from sft_exp.training.relaunch import hold_hydra_records

hold_hydra_records()  # here, not under __main__: a submitit job imports this module to run the task function

log = logging.getLogger("sft_exp")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    from sft_exp.run.distributed import refuse_sweep_under_launcher
    from sft_exp.train import run

    try:
        refuse_sweep_under_launcher(multirun=_sweeper() is not None)
    except UserError as e:
        log.error("%s", e)
        sys.exit(2)  # the whole sweep: every job would fail the same way
    try:
        return run(cfg)
    except TrainingInterrupted as e:
        # A preempted job or Ctrl-C: the checkpoint is saved; stop the whole process (and any sweep).
        log.warning("%s", e)
        if e.then is not None:  # submitit's handler, deferred until the save: requeue the job and exit (rank 0)
            from sft_exp.run.slurm import requeue_through

            requeue_through(e.then, e.signum)
        sys.exit(128 + e.signum)
    except Exception as e:
        e = _user_error_inside(e)
        if _sweeper() is not None:
            return _failed_sweep_job(cfg, e)
        if isinstance(e, UserError):
            # A user mistake: the message says what and where; a traceback would only bury it.
            log.error("%s", e)
            sys.exit(2)
        raise


def _user_error_inside(error: Exception) -> Exception:
    """A component's own UserError, which hydra.utils.instantiate wraps in an InstantiationException."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and isinstance(error.__cause__, UserError):
        return error.__cause__
    return error


def _sweeper():
    """The sweeper's _target_ in a multirun, else None."""
    from sft_exp.run.hydra_job import multirun_hydra_config

    hydra_cfg = multirun_hydra_config()
    return str(hydra_cfg.sweeper.get("_target_", "")) if hydra_cfg is not None else None


def _failed_sweep_job(cfg: DictConfig, error: Exception) -> float:
    """One failed job must not stop the sweep: record it in the job's summary.json and go on."""
    from sft_exp.run.folder import mark_failed

    if isinstance(error, UserError):
        log.error("job failed: %s", error)
    else:
        log.exception("job failed")
    from sft_exp.training.relaunch import RunFolderTaken

    run_dir = Path(cfg.run_dir)
    if not isinstance(error, RunFolderTaken):  # that folder is another run's, left as it was
        mark_failed(run_dir, error)
    if "optuna" in _sweeper().lower():
        raise error  # Optuna records a failed trial (a NaN objective would crash the sweeper instead)
    return math.nan


def cli() -> None:
    """`python -m sft_exp` and the `sft-exp` console script: a tool by its name, else training (or a sweep)."""
    from sft_exp.tools import TOOLS, run_tool

    if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
        sys.exit(run_tool(sys.argv[1], sys.argv[2:]))
    install_for_hydra_main()  # Hydra's composition errors: one message, "did you mean", exit code 2
    main()


if __name__ == "__main__":
    cli()
