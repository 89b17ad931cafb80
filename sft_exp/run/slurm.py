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
        raise ConfigError(
            f"hydra/launcher=slurm: `sinfo` did not answer in {timeout:.0f}s; is slurmctld "
            f"running and reachable ({where})?"
        ) from None
    if done.returncode != 0:
        raise ConfigError(
            f"hydra/launcher=slurm: `sinfo` failed, so no job was submitted:\n  {done.stderr.strip()}\n"
            f"Check that slurmctld runs and is reachable from here ({where}, SlurmctldHost in it), and that "
            "munge runs on this machine."
        )


def has_accounting() -> bool:
    """Whether `sacct` answers (SLURM accounting via slurmdbd); submitit reads job states from it."""
    try:
        return (
            subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=SINFO_TIMEOUT_S).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def controller_info_watcher():
    """submitit's job-state watcher, asking `squeue` where there is no accounting for `sacct` to read.

    Without it a job that dies without writing its result (killed, out of memory) stays UNKNOWN to
    submitit, and the sweep waits for it forever. squeue knows finished jobs for MinJobAge (300 s by
    default) after they end, time enough for the next poll to see FAILED / CANCELLED / OUT_OF_MEMORY.
    """
    from submitit.slurm.slurm import SlurmInfoWatcher

    class ControllerInfoWatcher(SlurmInfoWatcher):
        def _make_command(self):
            command = super()._make_command()
            if command is None:
                return None
            job_ids = [command[i + 1] for i, arg in enumerate(command) if arg == "-j"]
            return ["squeue", "-h", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(job_ids)]

        def read_info(self, string):
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info("JobID|State|NodeList\n" + text)  # sacct's header, squeue's rows

    return ControllerInfoWatcher(delay_s=60)


def watch_jobs_through_the_controller() -> None:
    """Where sacct cannot answer, make submitit's SLURM jobs read their states from squeue (this process)."""
    from submitit.slurm import slurm

    if not has_accounting() and type(slurm.SlurmJob.watcher) is slurm.SlurmInfoWatcher:
        log.info("no SLURM accounting (sacct): job states come from squeue")
        slurm.SlurmJob.watcher = controller_info_watcher()


def requeue_through(handler, signum: int) -> None:
    """Call submitit's preemption handler once the checkpoint is saved: it re-pickles the job, runs
    `scontrol requeue` and exits (on rank 0; other ranks return). In a preemption SLURM has requeued the
    job itself (PreemptMode=REQUEUE: the job is COMPLETING with its restart count already raised) and
    scontrol refuses ("Job is pending execution"): the requeue is done, so this attempt only exits,
    without a result file that would end the sweep's wait for the job."""
    import sys

    try:
        handler(signum, None)
    except subprocess.CalledProcessError as error:
        if "requeue" not in error.cmd or not requeued_by_slurm():
            raise
        log.warning("SLURM has already requeued this job (preempted): its next attempt resumes from the checkpoint")
        sys.exit(-1)  # what submitit does after its own requeue: no result, SLURM runs the job again


def requeued_by_slurm() -> bool:
    """Whether the controller counts more restarts of this job than this attempt's SLURM_RESTART_COUNT."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S
        ).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    restarts = next((int(f.split("=", 1)[1]) for f in shown.split() if f.startswith("Restarts=")), 0)
    return restarts > int(os.environ.get("SLURM_RESTART_COUNT") or 0)
