"""Errors that are the user's to fix (the CLI prints their message alone, without a traceback), and
the clean stop of a preempted job. Kept free of heavy imports: the CLI catches these before torch loads."""
import signal
from pathlib import Path


class UserError(Exception):
    """A mistake in the config, the data or the command line. The message says what, where and what to do."""


class ConfigError(UserError):
    """A config value that cannot work (names the key)."""


class DataError(UserError):
    """A data source or row that cannot be used (names the file and row)."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume.

    `then`: the signal's previous handler, to call once the run folder is final (submitit's requeue).
    """

    def __init__(self, signum: int, step: int, run_dir: Path, then=None):
        self.signum, self.step, self.run_dir, self.then = signum, step, run_dir, then
        then_what = ("this SLURM job is requeued and resumes from it by itself" if then is not None
                     else f"Resume with: {resume_command(run_dir)}")
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was saved in "
            f"{run_dir / 'checkpoints'}. {then_what}"
        )


def resume_command(run_dir: Path) -> str:
    """This process's command line, to paste, with the run folder and resume_from_checkpoint=true."""
    import shlex
    import sys

    kept = [arg for arg in sys.argv[1:] if not arg.startswith(("hydra.run.dir=", "resume_from_checkpoint="))]
    return shlex.join(["python", "-m", "sft_exp", *kept, f"hydra.run.dir={run_dir}", "resume_from_checkpoint=true"])
