"""hydra/launcher=slurm: Hydra's submitit SLURM launcher that asks the controller before it submits
(the launcher class is hydra_plugins.sft_exp_slurm.SlurmLauncher: Hydra loads launchers from there only).

Without a reachable controller submitit's sbatch fails late or its status polling waits; `sinfo`
answers in seconds, so a sweep that cannot be submitted stops before any job is, with SLURM's own
error and what to check.
"""
from __future__ import annotations

import logging
import os
import subprocess

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

SINFO_TIMEOUT_S = 30


def check_controller(timeout: float = SINFO_TIMEOUT_S) -> None:
    """`sinfo` must answer: SLURM's client tools are here and the controller (slurmctld) is reachable."""
    where = f"SLURM_CONF={os.environ['SLURM_CONF']}" if "SLURM_CONF" in os.environ else "the default slurm.conf"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(
            "hydra/launcher=slurm submits jobs with SLURM's client tools, and `sinfo` is not on this machine's "
            "PATH: run the sweep on a SLURM login node (or install slurm-client), or drop hydra/launcher=slurm."
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"hydra/launcher=slurm: `sinfo` did not answer in {timeout:.0f}s; is slurmctld "
                          f"running and reachable ({where})?") from None
    if done.returncode != 0:
        raise ConfigError(
            f"hydra/launcher=slurm: `sinfo` failed, so no job was submitted:\n  {done.stderr.strip()}\n"
            f"Check that slurmctld runs and is reachable from here ({where}, SlurmctldHost in it), and that "
            "munge runs on this machine."
        )
