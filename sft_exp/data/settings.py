"""`DataSettings` and `Source`: what `data.*` configures, as plain dataclasses.

Hydra builds `DataSettings` from conf/data/*.yaml (`_target_: sft_exp.data.DataSettings`); Python
builds the same object directly. The cheap checks (formats, strategies, missing files, ...) run
once, when it is built, so a mistake fails before any model or data loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from sft_exp.errors import ConfigError


@dataclass
class Source:
    """One `data.sources[]` (or `data.eval_sources[]`) entry; see SourceConfig in sft_exp/config.py."""

    path: str
    name: Optional[str] = None
    subset: Optional[str] = None
    split: str = "train"
    format: str = "auto"
    columns: dict = field(default_factory=dict)
    weight: float = 1.0
    max_samples: Optional[int] = None
    # This source's own held-out file; without one, `eval_split_size` of its rows are held out.
    eval_path: Optional[str] = None
    eval_max_samples: Optional[int] = None

    def heldout_file(self) -> "Source":
        """The source of this source's held-out rows: its `eval_path`, read like `path`, under its name."""
        from sft_exp.data.sources import source_name

        return dataclasses.replace(
            self, path=self.eval_path, name=source_name(self), max_samples=self.eval_max_samples,
            eval_path=None, eval_max_samples=None,
        )  # fmt: skip


@dataclass(kw_only=True)
class DataSettings:
    """Everything `prepare_datasets` needs besides the tokenizer; see DataConfig in sft_exp/config.py."""

    sources: list
    eval_sources: list = field(default_factory=list)
    eval_split_size: float = 0.05
    chat_template: Optional[str] = None
    max_length: int = 1024
    completion_only_loss: Optional[bool] = None
    assistant_only_loss: bool = False
    packing: bool = False
    # Padding-free batches without packing: a batch's rows back to back, position_ids restarting per row,
    # no pad tokens. None: on where attention runs per example (sdpa, loaded as sdpa_varlen; flash_attention_2/3).
    padding_free: Optional[bool] = None
    packing_strategy: str = "bfd"
    on_bad_row: str = "error"
    num_proc: Optional[int] = None
    seed: int  # required: the same seed as the run's, so the split and mixture follow it

    def __post_init__(self) -> None:
        from sft_exp.data.validate import check_settings

        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"data.seed={self.seed!r}: must be an integer (the run's `seed`)")
        self.sources = as_sources(self.sources, "data.sources")
        self.eval_sources = as_sources(self.eval_sources or [], "data.eval_sources")
        check_settings(self)


def as_sources(entries: Any, key: str) -> list[Source]:
    """Sources from `Source`s, dicts like {path: ..., weight: ...}, or bare path strings."""
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of sources like [{{path: train.jsonl}}]")
    from sft_exp.data.sources import refuse_streaming

    known = {f.name for f in dataclasses.fields(Source)}
    sources = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Source):
            entry = dataclasses.asdict(entry)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path") or not isinstance(entry["path"], str):
            raise ConfigError(f"{key}[{i}].path: each source needs a `path` (a file, folder or hub dataset id)")
        refuse_streaming(entry, f"{key}[{i}]")  # not an unknown key: a refusal with the way out
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{key}[{i}].{unknown[0]}: unknown key; source keys are {', '.join(sorted(known))}")
        sources.append(Source(**{**entry, "columns": dict(entry.get("columns") or {})}))
    return sources
