"""`plain(value)`: OmegaConf containers as plain dicts and lists (every interpolation resolved); anything
else as it is. Components take plain values, so Hydra and Python callers build them alike."""
from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
