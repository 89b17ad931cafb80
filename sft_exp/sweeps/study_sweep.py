"""The sweep loop on Optuna's ask-and-tell interface, behind the Hydra sweeper `hydra/sweeper=sft_optuna`.

Ask up to n_jobs trials, launch their jobs through whatever launcher is configured (basic, submitit local,
SLURM), read each job's summary.json, tell the study. The study lives in its storage, so:
- rerunning the same command continues it: a trial left RUNNING by a sweeper that died (or was stopped) is
  taken over and run again under its own number, in its own folder, from the last checkpoint its job saved
  there; n_trials counts the whole study; a trial's folder is named by its (never reused) number;
- several sweep processes may share one study (an RDB URL): a trial asked beyond n_trials is never run;
- each job opens the study itself to report intermediate values and ask whether to stop (pruning), which
  works from a SLURM job as well as in this process.
"""

from __future__ import annotations

import logging
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import OmegaConf

from sft_exp import compat
from sft_exp.atomic import read_json
from sft_exp.errors import ConfigError, UserError
from sft_exp.sweeps import space
from sft_exp.sweeps import storage as storage_lib
from sft_exp.sweeps.resume import HEARTBEAT, INTERRUPTED, OWNER, SURPLUS, Heartbeat, abandoned, claim, counts, owner
from sft_exp.sweeps.samplers import build_pruner, build_sampler, prunes

log = logging.getLogger("sft_exp.sweeps")

ERROR, FOLDER = "sft_exp_error", "sft_exp_folder"
STUDY_FILE, RESULTS_FILE = "study.yaml", "optimization_results.yaml"
AGGREGATES = {"mean": statistics.fmean, "median": statistics.median}


class StudySweep:
    def __init__(self, settings: dict):
        self.settings = settings
        self.config = self.launcher = self.hydra_context = None
        self.taken_over: set = set()

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: List[str]) -> Any:
        try:
            return self._sweep(arguments)
        except UserError as e:  # the user's to fix: the message alone, exit 2 (as a single run does)
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def _sweep(self, arguments: List[str]) -> Any:
        import optuna

        s = self.settings
        self.distributions, self.fixed = space.parse_space(s.get("params"), arguments)
        self.directions = [s["direction"]] if isinstance(s["direction"], str) else list(s["direction"])
        self.objectives = list(s.get("objectives") or [self.config.get("objective", "eval_loss")])
        self.seeds = [int(x) for x in s.get("seeds") or []]
        self._check_settings()
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        self.url = storage_lib.resolve(s.get("storage"), self.sweep_dir)
        self.storage = storage_lib.open_storage(self.url)  # before any job: a bad URL fails here
        self._check_composes()
        self.study = self._open_study(optuna)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self._write_study_file()
        log.info(
            "study %s in %s (look at it: optuna-dashboard %s)",
            self.study.study_name,
            storage_lib.redacted(self.url),
            storage_lib.dashboard_argument(self.url),
        )
        returns = []
        taken_over = self._take_over_interrupted()
        for start in range(0, len(taken_over), int(s.get("n_jobs") or 1)):
            returns.append(self._run(taken_over[start : start + int(s.get("n_jobs") or 1)]))
        while True:
            remaining = self.n_trials - sum(counts(t) for t in self.study.get_trials(deepcopy=False))
            if remaining <= 0:
                break
            trials = self._ask(min(int(s.get("n_jobs") or 1), remaining))
            if not trials:
                break  # another process took the last ones
            returns.append(self._run(trials))
        self._write_results()
        return returns

    def _check_settings(self) -> None:
        s = self.settings
        bad = [d for d in self.directions if d not in ("minimize", "maximize")]
        if bad or not self.directions:
            raise ConfigError(f"hydra.sweeper.direction={s['direction']}: each direction is minimize or maximize")
        if len(self.directions) != len(self.objectives):
            raise ConfigError(
                f"hydra.sweeper.direction has {len(self.directions)} directions but there are "
                f"{len(self.objectives)} objectives ({', '.join(self.objectives)}): give one direction per "
                "objective (hydra.sweeper.objectives lists them; default: the config's `objective`)"
            )
        if prunes(s.get("pruner")) and len(self.objectives) > 1:
            raise ConfigError(
                "hydra.sweeper.pruner works with one objective only (Optuna cannot prune a "
                "multi-objective study): set hydra.sweeper.pruner=null or one objective"
            )
        if prunes(s.get("pruner")) and self.seeds:
            raise ConfigError(
                "hydra.sweeper.pruner and hydra.sweeper.seeds together are not supported: a trial's "
                "seeds would report to one trial. Prune without replicates, or replicate without a pruner"
            )
        if s.get("seed_objective", "mean") not in AGGREGATES:
            raise ConfigError(
                f"hydra.sweeper.seed_objective={s.get('seed_objective')!r}: one of {', '.join(AGGREGATES)}"
            )
        build_pruner(s.get("pruner"))  # a bad pruner fails now, not in the first job
        kind = (s.get("sampler") or {}).get("type")
        grid = space.grid_of(self.distributions) if kind == "grid" else None
        self.grid = grid
        size = math.prod(len(v) for v in grid.values()) if grid else None
        n_trials = s.get("n_trials")
        if n_trials is None and size is None:
            raise ConfigError(
                "hydra.sweeper.n_trials is required (trials over the whole study), except with the grid sampler"
            )
        self.n_trials = int(n_trials if n_trials is not None else size)
        if size is not None and self.n_trials > size:
            log.info("n_trials=%d is more than the grid's %d points: the sweep runs %d", self.n_trials, size, size)
            self.n_trials = size

    def _check_composes(self) -> None:
        """Compose the first trial's config here: a misspelled sweep key fails before any job."""
        sample = [space.override(k, _some_value(d)) for k, d in self.distributions.items()]
        try:
            self.validate_batch_is_legal([[*self.fixed, *sample]])
        except Exception as e:
            raise ConfigError(f"the sweep's overrides do not compose: {e}") from None

    def validate_batch_is_legal(self, batch) -> None:
        for overrides in batch:
            self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides)
            )

    def _open_study(self, optuna):
        name = self.settings.get("study_name") or "sft_exp"
        study = optuna.create_study(
            study_name=name, storage=self.storage, directions=self.directions, load_if_exists=True
        )
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ConfigError(
                f"study {name} in {storage_lib.redacted(self.url)} was created with direction {found}, "
                f"this sweep says {self.directions}: use another hydra.sweeper.study_name"
            )
        study.sampler = build_sampler(self.settings.get("sampler"), grid=self.grid, seed_offset=len(study.trials))
        return study

    # ------------------------------------------------------------------ resume
    def _take_over_interrupted(self) -> list:
        """RUNNING trials whose sweeper is gone: claimed by this sweeper, to run again under their own number
        (their folder keeps its number; the job continues from the checkpoint it saved there, if any)."""
        from optuna.trial import TrialState

        taken = []
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not abandoned(frozen, float(self.settings.get("stale_after_s") or 300)):
                continue
            trial_id = compat.trial_id(frozen)
            if not claim(self.storage, trial_id):
                continue  # another sweeper claimed it at the same moment
            log.warning(
                "trial %d was interrupted (its sweeper is gone): this sweeper runs it again%s",
                frozen.number,
                "" if not self._checkpointed(frozen.number) else ", from its last checkpoint",
            )
            taken.append(optuna_trial(self.study, trial_id))
        self.taken_over = {trial.number for trial in taken}
        return taken

    def _checkpointed(self, number: int) -> bool:
        return any(self._checkpoint_of(folder) for folder, _ in self._jobs_of(number, {}))

    def _checkpoint_of(self, folder: str) -> bool:
        """Whether a job folder holds a finished checkpoint (checkpoint-<step> folders appear only complete:
        they are written under a staging name and renamed into place)."""
        return any((self.sweep_dir / folder / "checkpoints").glob("checkpoint-*/trainer_state.json"))

    # ------------------------------------------------------------------ ask, launch, tell
    def _ask(self, count: int) -> list:
        from optuna.trial import TrialState

        trials = []
        for _ in range(count):
            trial = self.study.ask(fixed_distributions=self.distributions)
            self.storage.set_trial_user_attr(compat.trial_id(trial), OWNER, owner())
            self.storage.set_trial_user_attr(compat.trial_id(trial), HEARTBEAT, time.time())
            before = sum(counts(t) for t in self.study.get_trials(deepcopy=False) if t.number < trial.number)
            if before >= self.n_trials:  # another sweep process asked the last trial at the same time
                self.storage.set_trial_user_attr(compat.trial_id(trial), SURPLUS, True)
                self.study.tell(trial, state=TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    def _jobs(self, trial) -> list:
        """(folder, overrides) of each job of a trial; a job taken over from a dead sweeper resumes from its
        folder's last checkpoint."""
        jobs = []
        for folder, overrides in self._jobs_of(trial.number, trial.params):
            # only a trial taken over: a new trial's folder holding a checkpoint is another study's, not its own
            if trial.number in self.taken_over and self._checkpoint_of(folder):
                overrides.append(space.override("resume_from_checkpoint", str(self.sweep_dir / folder)))
            jobs.append((folder, overrides))
        return jobs

    def _jobs_of(self, number: int, params: dict) -> list:
        """(folder, overrides) of each job of a trial: one, or one per seed in <trial>/seed-<s>."""
        params = [space.override(k, v) for k, v in params.items()]
        hydra = ["hydra.sweeper.trial=" + str(number), space.override("hydra.sweeper.storage", self.url)]
        if not self.seeds:
            return [(str(number), [*self.fixed, *params, *hydra, f"hydra.sweep.subdir={number}"])]
        return [
            (
                f"{number}/seed-{seed}",
                [*self.fixed, *params, f"seed={seed}", *hydra, f"hydra.sweep.subdir={number}/seed-{seed}"],
            )
            for seed in self.seeds
        ]

    def _run(self, trials: list) -> list:
        jobs = [(trial, folder, overrides) for trial in trials for folder, overrides in self._jobs(trial)]
        for trial in trials:
            self.storage.set_trial_user_attr(compat.trial_id(trial), FOLDER, str(trial.number))
            log.info("trial %d: %s", trial.number, " ".join(space.override(k, v) for k, v in trial.params.items()))
        beat = Heartbeat(self.storage, trials, float(self.settings.get("stale_after_s") or 300) / 4)
        try:
            results = self.launcher.launch([overrides for _, _, overrides in jobs], initial_job_idx=trials[0].number)
        except BaseException:  # Ctrl-C, SIGTERM (the job saved a checkpoint), a launcher crash: rerun them later
            for trial in trials:  # still RUNNING: the next sweeper on this study takes them over at once
                self.storage.set_trial_user_attr(compat.trial_id(trial), INTERRUPTED, True)
            log.warning(
                "sweep interrupted: trial(s) %s will run again, from their last checkpoint, when the same "
                "command runs again (same hydra.sweep.dir or storage): %s",
                ", ".join(str(t.number) for t in trials),
                "python -m sft_exp " + shlex.join(sys.argv[1:]),
            )
            raise
        finally:
            beat.stop()
        by_trial = {}
        for (trial, folder, _), result in zip(jobs, results):
            by_trial.setdefault(trial.number, (trial, []))[1].append((folder, result))
        for trial, outcomes in by_trial.values():
            self._tell(trial, outcomes)
        return list(results)

    def _tell(self, trial, outcomes: list) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        summaries = [read_summary(self.sweep_dir / folder) for folder, _ in outcomes]
        failed = [(folder, r) for folder, r in outcomes if r.status != JobStatus.COMPLETED]
        if failed:
            folder, result = failed[0]
            error = _first_line(compat.job_return_value(result))
            self.storage.set_trial_user_attr(compat.trial_id(trial), ERROR, f"{folder}: {error}")
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed (%s): %s; the sweep goes on", trial.number, folder, error)
            return
        if any(summary.get("status") == "pruned" for summary in summaries):
            self.study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned at step %s", trial.number, summaries[0].get("global_step"))
            return
        values = []
        for objective in self.objectives:
            per_seed = []
            for (folder, _), summary in zip(outcomes, summaries):
                if objective not in summary:
                    self._objective_missing(trial, objective, folder, summary)
                per_seed.append(_float(summary[objective]))
            values.append(AGGREGATES[self.settings.get("seed_objective", "mean")](per_seed))
        if not all(math.isfinite(v) for v in values):
            self.storage.set_trial_user_attr(compat.trial_id(trial), ERROR, f"objective is not finite: {values}")
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d: objective %s is not finite; recorded failed", trial.number, values)
            return
        self.study.tell(trial, values)
        log.info("trial %d: %s = %s", trial.number, ", ".join(self.objectives), ", ".join(f"{v:.6g}" for v in values))

    def _objective_missing(self, trial, objective: str, folder: str, summary: dict) -> None:
        """A misspelled objective would fail every trial: stop at the first, naming what the run reports."""
        from optuna.trial import TrialState

        reported = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        message = (
            f"objective {objective!r} is not a metric the run reports (trial {trial.number}, "
            f"{self.sweep_dir / folder}/summary.json). It reports: {', '.join(reported)}. Set `objective=` "
            "(or hydra.sweeper.objectives) to one of them."
        )
        self.storage.set_trial_user_attr(compat.trial_id(trial), ERROR, message)
        self.study.tell(trial, state=TrialState.FAIL)
        raise ConfigError(message)

    # ------------------------------------------------------------------ files
    def _write_study_file(self) -> None:
        info = {
            "study_name": self.study.study_name,
            "storage": storage_lib.redacted(self.url),
            "objectives": self.objectives,
            "directions": self.directions,
            "n_trials": self.n_trials,
            "seeds": self.seeds or None,
            "dashboard": f"optuna-dashboard {storage_lib.dashboard_argument(self.url)}",
        }
        OmegaConf.save(OmegaConf.create(info), self.sweep_dir / STUDY_FILE)

    def _write_results(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
        result: dict = {
            "study_name": self.study.study_name,
            "directions": self.directions,
            "objectives": self.objectives,
            "trials": {k: v for k, v in states.items() if v},
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(self.directions) == 1:
            best = self.study.best_trial
            result.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
        elif complete:
            result["best_trials"] = [
                {"trial": t.number, "values": list(t.values), "params": dict(t.params)} for t in self.study.best_trials
            ]
        OmegaConf.save(OmegaConf.create(result), self.sweep_dir / RESULTS_FILE)
        log.info(
            "best: %s (in %s)", {k: v for k, v in result.items() if k.startswith("best")}, self.sweep_dir / RESULTS_FILE
        )


def optuna_trial(study, trial_id: int):
    """A live Trial for a RUNNING trial of the study (what study.ask returns), to run and tell it again."""
    import optuna

    return optuna.trial.Trial(study, trial_id)


def read_summary(folder: Path) -> dict:
    return read_json(folder / "summary.json", invalid_ok=True)  # a job may be writing it right now


def _some_value(distribution):
    choices = getattr(distribution, "choices", None)
    return choices[0] if choices else distribution.low


def _first_line(error) -> str:
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return text.strip().splitlines()[0] if text.strip() else "failed"


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def trial_number() -> Optional[int]:
    """This job's trial number when it runs inside an sft_optuna sweep, else None."""
    from sft_exp.run.hydra_job import multirun_hydra_config

    hydra_cfg = multirun_hydra_config()
    if hydra_cfg is None:
        return None
    return hydra_cfg.sweeper.get("trial")
