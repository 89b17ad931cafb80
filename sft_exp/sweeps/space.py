"""The search space: `hydra.sweeper.params` (and sweep overrides on the command line) as Optuna distributions.

Accepted forms for one parameter, in YAML or on the command line:
  optimizer.lr: tag(log, interval(1e-5, 1e-3))     float, log scale
  optimizer.weight_decay: interval(0.0, 0.1)        float (int when both ends are ints)
  peft.r: range(4, 33, 4)                           int (or float) with a step; the stop is excluded
  loss: nll,dft          or  choice(nll, dft)       categorical
  optimizer.lr: {type: float, low: 1e-5, high: 1e-3, log: true, step: null}
  peft.r: {type: int, low: 4, high: 32, step: 4, log: false}
  loss: {type: categorical, choices: [nll, dft]}
  trainer.max_steps: 40                             a fixed value every trial gets
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Tuple

from sft_exp.errors import ConfigError

ACCEPTED = (
    "accepted forms: `tag(log, interval(LOW, HIGH))`, `interval(LOW, HIGH)`, `range(START, STOP, STEP)`, "
    "`a,b,c` or `choice(a, b, c)`, a fixed value, or a mapping {type: float|int|categorical, low, high, "
    "log, step, choices}"
)
DICT_TYPES = ("float", "int", "categorical")


def parse_space(params: Dict[str, Any], arguments: List[str]) -> Tuple[dict, list]:
    """(distributions by key, the overrides every trial gets) from the sweeper's params, then the command line's.

    A command-line argument that is no sweep (`trainer.max_steps=40`, `~callbacks.x`) passes through as it is.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    distributions, fixed = {}, {}
    for key, spec in (params or {}).items():
        if _is_mapping(spec):
            distributions[key] = _from_mapping(key, dict(spec))
        elif isinstance(spec, str):
            override_ = _parse(parser, key, f"{key}={spec}")
            if override_.is_sweep_override():
                distributions[key] = _from_sweep(key, override_.value())
            else:
                fixed[key] = f"{key}={spec}"
        else:
            fixed[key] = override(key, spec)
    for argument in arguments:
        override_ = _parse(parser, argument.partition("=")[0], argument)
        key = override_.get_key_element()
        distributions.pop(key, None), fixed.pop(key, None)  # the command line wins over the YAML
        if override_.is_sweep_override():
            distributions[key] = _from_sweep(key, override_.value())
        else:
            fixed[key] = argument
    return distributions, list(fixed.values())


def _parse(parser, key: str, text: str):
    try:
        return parser.parse_overrides([text])[0]
    except Exception as e:
        raise ConfigError(f"hydra.sweeper.params.{key}: cannot parse {text!r} ({e}); {ACCEPTED}") from None


def _is_mapping(spec) -> bool:
    from omegaconf import DictConfig

    return isinstance(spec, (dict, DictConfig))


def _from_sweep(key: str, sweep):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    tags = set(getattr(sweep, "tags", ()) or ())
    unknown = tags - {"log"}
    if unknown:
        raise ConfigError(f"hydra.sweeper.params.{key}: unknown tag {sorted(unknown)} (only `log`); {ACCEPTED}")
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ConfigError(f"hydra.sweeper.params.{key}: `log` applies to interval or range, not to choices")
        return CategoricalDistribution([_choice(key, c) for c in sweep.list])
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if isinstance(low, int) and isinstance(high, int) and not log:
            return _checked(key, IntDistribution, low, high)
        return _checked(key, FloatDistribution, float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if step <= 0 or stop <= start:
            raise ConfigError(f"hydra.sweeper.params.{key}: range({start}, {stop}, {step}) is empty; {ACCEPTED}")
        last = start + step * math.floor((stop - start) / step - 1e-9)  # Hydra's range excludes its stop
        if all(isinstance(v, int) for v in (start, stop, step)):
            return _checked(key, IntDistribution, start, last, step=step, log=log)
        return _checked(key, FloatDistribution, float(start), float(last), step=float(step))
    raise ConfigError(f"hydra.sweeper.params.{key}: unsupported sweep {sweep}; {ACCEPTED}")


def _from_mapping(key: str, spec: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = spec.pop("type", None)
    if kind not in DICT_TYPES:
        raise ConfigError(
            f"hydra.sweeper.params.{key}: type {kind!r} is not one of {', '.join(DICT_TYPES)}; {ACCEPTED}"
        )
    allowed = {
        "float": {"low", "high", "log", "step"},
        "int": {"low", "high", "log", "step"},
        "categorical": {"choices"},
    }[kind]
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(
            f"hydra.sweeper.params.{key}: {sorted(extra)} do not apply to type {kind} "
            f"(it takes {sorted(allowed)}); {ACCEPTED}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not choices or isinstance(choices, str):
            raise ConfigError(f"hydra.sweeper.params.{key}: type categorical needs a list `choices`; {ACCEPTED}")
        return CategoricalDistribution([_choice(key, c) for c in choices])
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"hydra.sweeper.params.{key}: type {kind} needs `low` and `high`; {ACCEPTED}")
    cast = float if kind == "float" else int
    try:
        low, high = cast(float(spec["low"])), cast(float(spec["high"]))
        step = None if spec.get("step") is None else cast(float(spec["step"]))
    except (TypeError, ValueError):
        raise ConfigError(
            f"hydra.sweeper.params.{key}: low/high/step must be numbers, got {spec}; {ACCEPTED}"
        ) from None
    log = bool(spec.get("log", False))
    if kind == "int":
        return _checked(key, IntDistribution, low, high, log=log, step=step or 1)
    return _checked(key, FloatDistribution, low, high, log=log, step=step)


def _checked(key: str, distribution, low, high, **kwargs):
    """Optuna's own checks (low <= high, log needs low > 0, not log and step together), named by parameter."""
    try:
        return distribution(low, high, **kwargs)
    except ValueError as e:
        raise ConfigError(f"hydra.sweeper.params.{key}: {e}; {ACCEPTED}") from None


def _choice(key: str, value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"hydra.sweeper.params.{key}: a choice must be a number, string, bool or null, got {value!r}")


def grid_of(distributions: dict) -> dict:
    """The grid sampler's search space: every value of each parameter (choices, or a range's steps)."""
    from optuna.distributions import CategoricalDistribution

    grid = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif getattr(dist, "step", None):
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: the grid sampler needs choices or a range with a "
                "step (range(START, STOP, STEP)), not a continuous interval"
            )
    return grid


SAFE = re.compile(r"[A-Za-z0-9_./:@+\-]+")


def override(key: str, value) -> str:
    """`key=value` as Hydra's override grammar reads it back (strings quoted when they need it)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, int) or SAFE.fullmatch(str(value)):
        return f"{key}={value}"
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{escaped}'"
