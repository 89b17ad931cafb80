"""Optuna's samplers and pruners by name, as `hydra.sweeper.sampler` / `hydra.sweeper.pruner` give them:
{type: <name>, <keyword arguments of the Optuna class>...}. Built by the sweeper and, for the pruner, by
each job (which asks its trial whether to stop)."""

from __future__ import annotations

from typing import Optional

from sft_exp.errors import ConfigError

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "nsga2": "NSGAIISampler",
    "qmc": "QMCSampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
}


def _kind_and_kwargs(spec, key: str, table: dict) -> tuple:
    spec = dict(spec or {})
    kind = spec.pop("type", None)
    if kind not in table:
        raise ConfigError(f"{key}.type={kind!r} is not one of {', '.join(table)} (or set {key}: null)")
    return kind, spec


def build_sampler(spec, *, grid: Optional[dict] = None, seed_offset: int = 0):
    """The sampler; its seed moves on by `seed_offset` (the trials already in the study), so a resumed study
    draws new values instead of repeating the first run's."""
    import optuna

    kind, kwargs = _kind_and_kwargs(spec, "hydra.sweeper.sampler", SAMPLERS)
    kwargs = _applicable(kind, kwargs)
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + seed_offset
    if kind == "grid":
        kwargs["search_space"] = grid
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("hydra.sweeper.sampler.type=cmaes needs the cmaes package: pip install cmaes") from None
    try:
        if kind == "grid":
            return _AskAndTellGrid(**kwargs)
        return getattr(optuna.samplers, SAMPLERS[kind])(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.sampler (type {kind}): {e}") from None


def _applicable(kind: str, kwargs: dict) -> dict:
    """A setting of another sampler (n_startup_trials left in the YAML, then sampler.type=grid on the command
    line) is dropped with a warning; one no sampler takes is a mistake and an error."""
    import inspect
    import logging

    import optuna

    def takes(name: str) -> set:
        return set(inspect.signature(getattr(optuna.samplers, name).__init__).parameters) - {"self"}

    own, every = takes(SAMPLERS[kind]), set().union(*(takes(n) for n in SAMPLERS.values()))
    unknown = set(kwargs) - every
    if unknown:
        raise ConfigError(
            f"hydra.sweeper.sampler: {sorted(unknown)} is no setting of any sampler; "
            f"the {kind} sampler takes {sorted(own)}"
        )
    dropped = set(kwargs) - own
    if dropped:
        logging.getLogger(__name__).warning(
            "hydra.sweeper.sampler: %s do not apply to the %s sampler: ignored", sorted(dropped), kind
        )
    return {k: v for k, v in kwargs.items() if k in own}


def prunes(spec) -> bool:
    """Whether `hydra.sweeper.pruner` asks for a pruner (`null` and `{type: null}` do not)."""
    return bool(spec) and dict(spec).get("type") not in (None, "none")


def build_pruner(spec):
    """The pruner, or None for `pruner: null` / `pruner: {type: null}`."""
    import optuna

    if not prunes(spec):
        return None
    kind, kwargs = _kind_and_kwargs(spec, "hydra.sweeper.pruner", PRUNERS)
    try:
        return getattr(optuna.pruners, PRUNERS[kind])(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.pruner (type {kind}): {e}") from None


def _ask_and_tell_grid():
    import optuna

    class AskAndTellGrid(optuna.samplers.GridSampler):
        """GridSampler without its study.stop() after the last point (allowed only inside study.optimize;
        raised from tell() it would leave the trial RUNNING). The sweep stops itself at the grid's size."""

        def after_trial(self, study, trial, state, values):
            return None

    return AskAndTellGrid


def _AskAndTellGrid(**kwargs):
    return _ask_and_tell_grid()(**kwargs)
