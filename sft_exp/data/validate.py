"""`validate_data_config`: cheap checks of `data.*` before any model or data loads."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sft_exp.config import DataConfig, SourceConfig
from sft_exp.data.formats import FORMAT_FIELDS, FORMATS
from sft_exp.data.sources import looks_local, source_name
from sft_exp.data.templates import check_chat_template_setting
from sft_exp.errors import ConfigError

PACKING_STRATEGIES = ("bfd", "wrapped")
BAD_ROW_POLICIES = ("error", "drop")
# Attention implementations that keep packed examples apart given position_ids that restart per
# example (transformers derives a block-diagonal mask, or varlen cu_seqlens for flash-attention).
PACKING_SAFE_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def as_data_config(data_cfg) -> DataConfig:
    """DataConfig from an omegaconf node, the dataclass itself, or a plain dict."""
    if isinstance(data_cfg, DataConfig):
        values = dataclasses.asdict(data_cfg)
    elif isinstance(data_cfg, DictConfig):
        values = OmegaConf.to_container(data_cfg, resolve=True)
    elif isinstance(data_cfg, dict):
        values = dict(data_cfg)
    else:
        raise ConfigError(f"data: expected a config mapping, got {type(data_cfg).__name__}")
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key; the data keys are {', '.join(sorted(known))}")
    if "sources" not in values:
        raise ConfigError("data.sources: missing; give at least one source, e.g. 'data.sources=[{path:train.jsonl}]'")
    if not isinstance(values.get("seed"), int):
        values["seed"] = 42  # a plain dict built in Python without the `${seed}` interpolation
    values["sources"] = _as_sources(values["sources"], "data.sources")
    values["eval_sources"] = _as_sources(values.get("eval_sources") or [], "data.eval_sources")
    return DataConfig(**values)


def _as_sources(entries, key: str) -> list[SourceConfig]:
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of sources like [{{path: train.jsonl}}]")
    sources = []
    known = {f.name for f in dataclasses.fields(SourceConfig)}
    for i, entry in enumerate(entries):
        entry = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else entry
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path") or not isinstance(entry["path"], str):
            raise ConfigError(f"{key}[{i}].path: each source needs a `path` (a file, folder or hub dataset id)")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{key}[{i}].{unknown[0]}: unknown key; source keys are {', '.join(sorted(known))}")
        sources.append(SourceConfig(**{**entry, "columns": dict(entry.get("columns") or {})}))
    return sources


def _check_source(source: SourceConfig, key: str) -> None:
    if looks_local(source.path) and not Path(source.path).expanduser().exists():
        raise ConfigError(f"{key}.path: {source.path} does not exist; check the path (hub ids look like org/name)")
    if source.format != "auto" and source.format not in FORMATS:
        raise ConfigError(f"{key}.format={source.format!r}: unknown format; use auto or one of {', '.join(FORMATS)}")
    fields = FORMAT_FIELDS.get(source.format)
    allowed = set(sum(fields, ())) if fields else {f for req, opt in FORMAT_FIELDS.values() for f in req + opt}
    for field in source.columns:
        if field not in allowed:
            raise ConfigError(
                f"{key}.columns.{field}: not a field of format {source.format}; map these: {', '.join(sorted(allowed))}"
            )
    if not (isinstance(source.weight, (int, float)) and math.isfinite(source.weight) and source.weight > 0):
        raise ConfigError(f"{key}.weight={source.weight}: must be a number > 0 (above 1 oversamples)")
    if source.max_samples is not None and source.max_samples < 1:
        raise ConfigError(f"{key}.max_samples={source.max_samples}: must be >= 1, or null for all rows")


def _check_sources(cfg: DataConfig) -> None:
    if not cfg.sources:
        raise ConfigError("data.sources: empty; give at least one source, e.g. 'data.sources=[{path:train.jsonl}]'")
    for i, source in enumerate(cfg.sources):
        _check_source(source, f"data.sources[{i}]")
    for i, source in enumerate(cfg.eval_sources):
        _check_source(source, f"data.eval_sources[{i}]")
    names = [source_name(source) for source in cfg.sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"data.sources[{i}].name: '{name}' is used twice; give each source its own `name`")


def _check_combinations(cfg: DataConfig) -> None:
    explicit = {source.format for source in cfg.sources}
    if cfg.completion_only_loss and explicit <= {"text", "messages", "sharegpt"}:
        raise ConfigError(
            "data.completion_only_loss=true, but no source is prompt-completion data (formats: "
            f"{', '.join(sorted(explicit))}); for conversations use data.assistant_only_loss=true"
        )
    if cfg.assistant_only_loss and explicit == {"text"}:
        raise ConfigError("data.assistant_only_loss=true needs conversational data, but every source is format=text")
    if cfg.eval_sources and cfg.eval_split_size:
        raise ConfigError(
            "data.eval_split_size: set either data.eval_sources or data.eval_split_size, not both"
        )


def validate_data_config(data_cfg) -> None:
    """Raise ConfigError naming `data.<key>` for values that cannot work. Loads nothing."""
    cfg = as_data_config(data_cfg)
    _check_sources(cfg)
    check_chat_template_setting(cfg.chat_template)
    if not isinstance(cfg.max_length, int) or cfg.max_length < 2:
        raise ConfigError(f"data.max_length={cfg.max_length}: must be an integer >= 2")
    if cfg.packing_strategy not in PACKING_STRATEGIES:
        raise ConfigError(f"data.packing_strategy={cfg.packing_strategy!r}: use one of {', '.join(PACKING_STRATEGIES)}")
    if cfg.on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError(f"data.on_bad_row={cfg.on_bad_row!r}: use one of {', '.join(BAD_ROW_POLICIES)}")
    if cfg.num_proc is not None and cfg.num_proc < 1:
        raise ConfigError(f"data.num_proc={cfg.num_proc}: must be >= 1, or null for one process")
    if cfg.eval_split_size < 0:
        raise ConfigError(f"data.eval_split_size={cfg.eval_split_size}: must be >= 0 (a fraction <1 or a row count)")
    _check_combinations(cfg)


def check_packing_attention(cfg: DataConfig, attn_implementation: str | None) -> None:
    if cfg.packing and attn_implementation is not None and attn_implementation not in PACKING_SAFE_ATTENTION:
        raise ConfigError(
            f"data.packing=true with model.attn_implementation={attn_implementation}: that attention cannot keep "
            f"packed examples apart; use one of {', '.join(PACKING_SAFE_ATTENTION)} or set data.packing=false"
        )
