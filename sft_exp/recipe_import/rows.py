"""What an import is made of: each recipe field becomes a Row (the field, the sft_exp settings it lands in,
and, where sft_exp's semantics differ, why); a Recipe answers "what does this field mean here", the
recipe's value or TRL's default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sft_exp.recipe_import.known import STALE, TRL_DEFAULTS

# `key` of a Setting that picks a group option (`/memory` -> memory=checkpointing), as a defaults-list override.
GROUP = "/"


@dataclass(frozen=True)
class Setting:
    """One value of the experiment: a dotted key (`optimizer.lr`, `data.sources.0.path`, `hydra.run.dir`) or a
    group choice (`/memory`)."""

    key: str
    value: Any


@dataclass
class Row:
    """One line of the import's table: a recipe field, where it lands, and a note where the semantics differ."""

    field: str
    settings: list[Setting] = field(default_factory=list)
    note: str = ""  # why sft_exp's meaning differs from TRL's / open-r1's; "" when it is the same
    info: str = ""  # a remark that changes nothing (not read, the same, the launch command)
    default: bool = False  # TRL's default, written out: the recipe does not set the field
    stale: str | None = None  # the field's name today, when the recipe uses an old one


class Recipe:
    """A recipe's fields under today's names (old names are read as the field they became), with TRL's default
    for a field it leaves out."""

    def __init__(self, data: dict, kind: str, path):
        self.kind, self.path = kind, path
        self.fields = list(data)  # as the recipe names them
        self.data = dict(data)
        for old in self.fields:
            if STALE.get(old) and STALE[old] not in data:
                self.data[STALE[old]] = data[old]

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, default: Any = None) -> Any:
        """The recipe's value, else TRL's default, else `default`."""
        if name in self.data:
            return self.data[name]
        return TRL_DEFAULTS.get(name, default)

    @property
    def evaluates(self) -> bool:
        """Whether TRL / open-r1 evaluate during training (they do only when eval_strategy says so)."""
        return str(self.get("eval_strategy")) != "no"

    @property
    def mixture(self) -> dict | None:
        return self.data.get("dataset_mixture")
