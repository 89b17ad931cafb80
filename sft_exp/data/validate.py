"""`check_settings`: the cheap checks of `data.*` that DataSettings runs when it is built (loads nothing)."""
from __future__ import annotations

import math
from pathlib import Path

from sft_exp.constants import SEPARATING_ATTENTION
from sft_exp.data.formats import FORMATS
from sft_exp.data.mixture import EVAL_SPLIT_FROM
from sft_exp.data.sources import looks_local, source_name
from sft_exp.data.templates import check_chat_template_setting
from sft_exp.errors import ConfigError

PACKING_STRATEGIES = ("bfd", "wrapped")
BAD_ROW_POLICIES = ("error", "drop")


def _check_path(path: str, key: str) -> None:
    if looks_local(path) and not Path(path).expanduser().exists():
        raise ConfigError(f"{key}: {path} does not exist; check the path (hub ids look like org/name)")


def _check_source(source, key: str) -> None:
    _check_path(source.path, f"{key}.path")
    if source.eval_path is not None:
        _check_path(source.eval_path, f"{key}.eval_path")
    elif source.eval_max_samples is not None:
        raise ConfigError(f"{key}.eval_max_samples={source.eval_max_samples}: set only with {key}.eval_path")
    if source.format != "auto" and source.format not in FORMATS:
        raise ConfigError(f"{key}.format={source.format!r}: unknown format; use auto or one of {', '.join(FORMATS)}")
    chosen = [FORMATS[source.format]] if source.format in FORMATS else FORMATS.values()
    allowed = {field for fmt in chosen for field in fmt.fields}
    for field, column in source.column_mapping.items():
        if field not in allowed:
            reversed_hint = (f"`columns` maps a format field to your column, so this is columns.{column}={field}; "
                             if column in allowed else "")
            raise ConfigError(f"{key}.columns.{field}: not a field of format {source.format}; {reversed_hint}"
                              f"map these: {', '.join(sorted(allowed))}")
    if not (isinstance(source.weight, (int, float)) and math.isfinite(source.weight) and source.weight > 0):
        raise ConfigError(f"{key}.weight={source.weight}: must be a number > 0 (above 1 oversamples)")
    for name in ("max_samples", "eval_max_samples"):
        value = getattr(source, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}.{name}={value}: must be an integer >= 1, or null for all rows")


def _check_sources(settings) -> None:
    if not settings.sources:
        raise ConfigError("data.sources: empty; give at least one source, e.g. 'data.sources=[{path:train.jsonl}]'")
    for i, source in enumerate(settings.sources):
        _check_source(source, f"data.sources[{i}]")
    for i, source in enumerate(settings.eval_sources):
        _check_source(source, f"data.eval_sources[{i}]")
        if source.eval_path is not None:
            raise ConfigError(f"data.eval_sources[{i}].eval_path: an eval source is held out already; remove it")
    names = [source_name(source) for source in settings.sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"data.sources[{i}].name: '{name}' is used twice; give each source its own `name`")


def _check_combinations(settings) -> None:
    explicit = {source.format for source in settings.sources}
    if settings.completion_only_loss and explicit <= {"text", "messages", "sharegpt"}:
        raise ConfigError(
            "data.completion_only_loss=true, but no source is prompt-completion data (formats: "
            f"{', '.join(sorted(explicit))}); for conversations use data.assistant_only_loss=true"
        )
    if settings.assistant_only_loss and explicit == {"text"}:
        raise ConfigError("data.assistant_only_loss=true needs conversational data, but every source is format=text")


def check_settings(settings) -> None:
    """Raise ConfigError naming `data.<key>` for values that cannot work (`settings`: a DataSettings). Loads nothing."""
    _check_sources(settings)
    check_chat_template_setting(settings.chat_template)
    if settings.max_length is not None and (not isinstance(settings.max_length, int) or settings.max_length < 2):
        raise ConfigError(f"data.max_length={settings.max_length}: must be an integer >= 2, or null for the default")
    if settings.packing_strategy not in PACKING_STRATEGIES:
        raise ConfigError(f"data.packing_strategy={settings.packing_strategy!r}: use one of {', '.join(PACKING_STRATEGIES)}")
    if settings.on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError(f"data.on_bad_row={settings.on_bad_row!r}: use one of {', '.join(BAD_ROW_POLICIES)}")
    if settings.num_proc is not None and settings.num_proc < 1:
        raise ConfigError(f"data.num_proc={settings.num_proc}: must be >= 1, or null for one process")
    if isinstance(settings.eval_split_size, bool) or not isinstance(settings.eval_split_size, (int, float)) \
            or not settings.eval_split_size >= 0:
        raise ConfigError(f"data.eval_split_size={settings.eval_split_size}: must be >= 0 (a fraction <1 or a row count)")
    _check_mixture(settings)
    _check_combinations(settings)


def _check_mixture(settings) -> None:
    """data.eval_split_from: source or mixture; a mixture's weights are fractions of each source's rows."""
    if settings.eval_split_from not in EVAL_SPLIT_FROM:
        raise ConfigError(f"data.eval_split_from={settings.eval_split_from!r}: use one of {', '.join(EVAL_SPLIT_FROM)}")
    if settings.eval_split_from != "mixture":
        return
    for i, source in enumerate(settings.sources):
        if source.weight > 1:
            raise ConfigError(
                f"data.sources[{i}].weight={source.weight} with data.eval_split_from=mixture: there a weight is the "
                "fraction of the source's rows taken (open-r1's dataset_mixture), at most 1; to oversample use "
                "data.eval_split_from=source")
        if source.eval_path is not None:
            raise ConfigError(
                f"data.sources[{i}].eval_path with data.eval_split_from=mixture: the held-out rows come from the "
                "mixed rows; remove eval_path, or use data.eval_split_from=source")


def check_packing_attention(settings, attn_implementation: str | None) -> None:
    if settings.packing and attn_implementation is not None and attn_implementation not in SEPARATING_ATTENTION:
        raise ConfigError(
            f"data.packing=true with model.attn_implementation={attn_implementation}: that attention cannot keep "
            f"packed examples apart; use one of {', '.join(SEPARATING_ATTENTION)} or set data.packing=false"
        )
