"""Errors that are the user's to fix (the CLI prints their message alone, without a traceback), and
the clean stop of a preempted job. Kept free of heavy imports: the CLI catches these before torch loads."""

import signal
from pathlib import Path


def closest_name(name: str, known, cutoff: float = 0.6):
    """The known name nearest to a misspelled one, or None."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """ "did you mean `x`? " for the nearest known name, else "": the one wording of every such hint."""
    close = closest_name(name, known, cutoff)
    return f"did you mean `{close}`? " if close else ""


def unknown_key_message(key: str, known) -> str:
    """The one message for a key a component has no setting for."""
    name = key.rsplit(".", 1)[-1]
    known = sorted(str(k) for k in known)
    return (
        f"{key}: unknown key; {did_you_mean(name, known)}the keys there are: {', '.join(known)}. "
        "Fix the spelling (a `+` in front only makes the component refuse it later)."
    )


class UserError(Exception):
    """A mistake in the config, the data or the command line. The message says what, where and what to do."""


class ConfigError(UserError):
    """A config value that cannot work (names the key)."""


class DataError(UserError):
    """A data source or row that cannot be used (names the file and row)."""


class BadRow(Exception):
    """A row that cannot be used; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume.

    `then`: the signal's previous handler, to call once the run folder is final (submitit's requeue);
    `command`: the command line that resumes it (run.hydra_job.resume_command; None in a sweep that says its own).
    """

    def __init__(self, signum: int, step: int, run_dir: Path, then=None, command: str | None = None):
        self.signum, self.step, self.run_dir, self.then = signum, step, run_dir, then
        then_what = (
            "this SLURM job is requeued and resumes from it by itself"
            if then is not None
            else f"Resume with: {command}"
            if command
            else "the sweep says how to resume it, with its other trials"
        )
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was saved in "
            f"{run_dir / 'checkpoints'}. {then_what}"
        )
