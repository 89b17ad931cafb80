"""TrialPruning: inside a job of an sft_optuna sweep with a pruner, every evaluation's objective value goes to
the job's trial as an intermediate value, and the pruner may stop the run there.

The job opens the study in its storage itself (the sweeper passes the storage and the trial number in
`hydra.sweeper`), so this works the same in the sweeper's process (basic launcher) and in a SLURM job.
Outside such a sweep it does nothing. A pruned run stops cleanly at that evaluation step: its folder and
metrics are complete up to it, train.run saves the model and writes status `pruned` in summary.json.
Rank 0 talks to the storage; the decision is broadcast so every rank stops at the same step.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from transformers import TrainerCallback

from sft_exp import compat
from sft_exp.sweeps.samplers import prunes

log = logging.getLogger(__name__)


class TrialPruning(TrainerCallback):
    def __init__(self, objective: str = "eval_loss"):
        self.objective = objective
        self.pruned = False
        self._trial = None
        self._active: Optional[bool] = None  # decided at the first evaluation

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not any(k.startswith("eval_") for k in logs) or not self._is_active(state):
            return
        value = logs.get(self.objective)
        stop = False
        if self._trial is not None and value is not None:  # rank 0
            value = float(value)
            self._trial.report(value if math.isfinite(value) else math.nan, state.global_step)
            last = state.max_steps and state.global_step >= state.max_steps
            stop = bool(state.global_step > 0 and not last and self._trial.should_prune())
        if _broadcast(stop):
            self.pruned = True
            control.should_training_stop = True
            log.info("trial pruned at step %d (%s=%s): stopping this run", state.global_step, self.objective, value)

    def _is_active(self, state) -> bool:
        if self._active is None:
            self._active = self._open(state.is_world_process_zero)
        return self._active

    def _open(self, is_main: bool) -> bool:
        from sft_exp.run.hydra_job import multirun_hydra_config

        hydra_cfg = multirun_hydra_config()
        sweeper = hydra_cfg.sweeper if hydra_cfg is not None else {}
        if sweeper.get("trial") is None or not prunes(sweeper.get("pruner")):
            return False
        objectives = list(sweeper.get("objectives") or [])
        self.objective = objectives[0] if objectives else self.objective
        if is_main:
            import optuna
            from omegaconf import OmegaConf

            from sft_exp.sweeps.samplers import build_pruner
            from sft_exp.sweeps.storage import open_storage

            storage = open_storage(str(sweeper.storage))
            pruner = build_pruner(OmegaConf.to_container(sweeper.pruner, resolve=True))
            study = optuna.load_study(study_name=str(sweeper.study_name), storage=storage, pruner=pruner)
            trial_id = storage.get_trial_id_from_study_id_trial_number(compat.study_id(study), int(sweeper.trial))
            self._trial = optuna.trial.Trial(study, trial_id)
        return True


def _broadcast(flag: bool) -> bool:
    """Rank 0's decision on every rank (a collective: every rank calls it at the same evaluation)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([float(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
