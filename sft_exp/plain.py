"""`plain(value)`: OmegaConf containers as plain dicts and lists (every interpolation resolved); anything
else as it is. Components take plain values, so Hydra and Python callers build them alike."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def dotted(config: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys ({"trainer": {"max_steps": 3}} -> {"trainer.max_steps": 3});
    an empty dict stays a value."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(dotted(value, name + "."))
        else:
            flat[name] = value
    return flat
