"""Resume bookkeeping in the study itself (trial user attrs), so any sweeper process can act on it:
which trials count toward n_trials, and which RUNNING trials lost their sweeper (to be taken over)."""

from __future__ import annotations

import os
import socket
import threading
import time

from sft_exp import compat

OWNER, HEARTBEAT = "sft_exp_owner", "sft_exp_heartbeat"
INTERRUPTED, SURPLUS = "sft_exp_interrupted", "sft_exp_surplus"


def counts(trial) -> bool:
    """Whether a trial counts toward n_trials: everything but surplus (never run) trials and, in studies an
    older sft_exp resumed, interrupted trials it failed and ran again as new ones."""
    from optuna.trial import TrialState

    if trial.user_attrs.get(SURPLUS):
        return False
    return not (trial.user_attrs.get(INTERRUPTED) and trial.state == TrialState.FAIL)


def abandoned(trial, stale_after_s: float) -> bool:
    """A RUNNING trial whose sweeper process is gone (same host: its pid; elsewhere: a stale heartbeat), or
    that its sweeper gave up on when it was stopped (Ctrl-C, SIGTERM)."""
    if trial.user_attrs.get(INTERRUPTED):
        return True
    recorded = trial.user_attrs.get(OWNER) or {}
    if recorded.get("host") == socket.gethostname():
        try:
            os.kill(int(recorded["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        return int(recorded.get("pid", -1)) == os.getpid()
    # A trial another sweeper has just asked has no owner or heartbeat yet: its start is its last sign of life.
    last = trial.user_attrs.get(HEARTBEAT)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    return time.time() - float(last or 0) > stale_after_s


class Heartbeat:
    """Marks this sweeper's running trials alive while their jobs run (another host can tell a dead sweeper)."""

    def __init__(self, storage, trials: list, every_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trials, max(every_s, 1.0)), daemon=True)
        self._thread.start()

    def _beat(self, storage, trials, every_s):
        while not self._stop.wait(every_s):
            for trial in trials:
                try:
                    storage.set_trial_user_attr(compat.trial_id(trial), HEARTBEAT, time.time())
                except Exception:
                    pass

    def stop(self):
        self._stop.set()


def owner() -> dict:
    """Who runs a trial: recorded at ask, read by abandoned()."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


CLAIM_SETTLE_S = 1.0


def claim(storage, trial_id: int, settle_s: float = CLAIM_SETTLE_S) -> bool:
    """Make this sweeper the owner of an abandoned trial; False when another sweeper claimed it too and won.

    Optuna's storages have no compare-and-set, so each claimant writes its own token, waits, and reads the
    owner back: two sweepers that found the trial abandoned at the same moment wrote within milliseconds of
    each other, and after the wait both read the same last write, so exactly one of them runs it (reading
    back at once, each could still see its own write and both would run it).
    """
    import uuid

    mine = {**owner(), "claim": uuid.uuid4().hex}
    storage.set_trial_user_attr(trial_id, OWNER, mine)
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
    time.sleep(settle_s)
    if storage.get_trial(trial_id).user_attrs.get(OWNER) != mine:
        return False
    storage.set_trial_user_attr(trial_id, INTERRUPTED, False)
    return True
