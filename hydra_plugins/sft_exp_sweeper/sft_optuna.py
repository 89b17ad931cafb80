"""`hydra/sweeper=sft_optuna`: Optuna (>= 4, ask-and-tell) behind Hydra's `-m`. See sft_exp/sweeps/."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf


@dataclass
class SftOptunaSweeperConf:
    _target_: str = "hydra_plugins.sft_exp_sweeper.sft_optuna.SftOptunaSweeper"
    study_name: str = "sft_exp"
    # null: a journal file <sweep folder>/optuna.journal; or a journal path; or an RDB URL (sqlite:///, postgresql://)
    storage: Optional[str] = None
    direction: Any = "minimize"  # or a list, one per objective
    objectives: Optional[List[str]] = None  # summary.json keys; null: the config's `objective`
    n_trials: Optional[int] = 20  # over the whole study (a resumed study runs the rest)
    n_jobs: int = 1  # trials launched together through the configured launcher
    sampler: Dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": None})
    # {type: median|percentile|successive_halving|hyperband|threshold, <its arguments>}; type null: no pruning
    pruner: Any = None
    params: Dict[str, Any] = field(default_factory=dict)
    seeds: Optional[List[int]] = None  # every trial runs once per seed, in <trial>/seed-<s>
    seed_objective: str = "mean"  # what the sampler sees of a trial's seeds: mean or median
    stale_after_s: float = 300.0  # a RUNNING trial of another host without a heartbeat this long is dead
    trial: Optional[int] = None  # set by the sweeper for each job: the trial it reports to


ConfigStore.instance().store(group="hydra/sweeper", name="sft_optuna", node=SftOptunaSweeperConf, provider="sft_exp")


class SftOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any):
        from sft_exp.sweeps.study_sweep import StudySweep

        settings = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in settings.items()
        }
        self.sweep_impl = StudySweep(settings)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweep_impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweep_impl.sweep(arguments)
