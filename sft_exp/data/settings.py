"""`DataSettings`, `Source` and the cheap checks of `data.*`: what the data group configures, as plain dataclasses.

Hydra builds `DataSettings` from conf/data/*.yaml (`_target_: sft_exp.data.DataSettings`); Python
builds the same object directly. The checks (formats, strategies, missing files, the per-turn loss
settings, `data.decontamination`) run once, when it is built, so a mistake fails before any model or
data loads. Nothing here imports torch or datasets (a subprocess test holds it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from sft_exp.constants import SEPARATING_ATTENTION
from sft_exp.data.formats import FORMATS
from sft_exp.data.sources import looks_local, source_name
from sft_exp.data.templates import check_chat_template_setting
from sft_exp.data.turns import EOT_POLICIES, TRAINABLE_ROLES, LossPolicy
from sft_exp.errors import ConfigError, unknown_key_message

# data.max_length when it is not set and the model's context is not smaller (TRL's SFTConfig default).
DEFAULT_MAX_LENGTH = 1024


@dataclass
class Source:
    """One `data.sources[]` (or `data.eval_sources[]`) entry. Its fields are the schema of a source
    (sft_exp.config generates it from this class)."""

    # Local .jsonl/.json/.parquet/.csv file or folder, or a hub dataset id.
    path: str
    # Display name of the source (per-source loss is logged as loss/<name>); default: the file stem.
    name: Optional[str] = None
    # Hub dataset configuration name (load_dataset's `name`).
    subset: Optional[str] = None
    split: str = "train"
    # auto | text | prompt_completion | messages | sharegpt | alpaca
    format: str = "auto"
    # Mapping from the format's field names to this file's column names. Conversation formats also
    # take the names inside turns (LLaMA-Factory's tags): role_tag, content_tag, user_tag,
    # assistant_tag, system_tag, function_tag (tool-call turns), observation_tag (tool results).
    # Or a list of the columns to keep (open-r1's form, e.g. [messages]): the others are dropped on loading.
    columns: dict[str, str] | list[str] | None = None
    # A column holding a list of objects (self-instruct's `instances`): one row per element, the other
    # columns repeated; map the element's fields with paths, e.g. columns: {input: instances.input}.
    # A `columns` value may be a path into nested fields in any case: instances.0.output.
    expand: Optional[str] = None
    # Sampling weight in the mixture; above 1 oversamples.
    weight: float = 1.0
    max_samples: Optional[int] = None
    # This source's own held-out file; without one, `eval_split_size` of its rows are held out.
    eval_path: Optional[str] = None
    eval_max_samples: Optional[int] = None

    def __post_init__(self) -> None:
        self.columns = _columns(self.columns, "columns")  # null (the schema's default: a list may replace it) is {}

    @property
    def column_mapping(self) -> dict[str, str]:
        """`columns` as a mapping (format field -> column name); {} for a keep-list."""
        return self.columns if isinstance(self.columns, dict) else {}

    @property
    def kept_columns(self) -> Optional[list[str]]:
        """`columns` given as a keep-list, else None."""
        return list(self.columns) if isinstance(self.columns, list) else None

    def heldout_file(self) -> Source:
        """The source of this source's held-out rows: its `eval_path`, read like `path`, under its name."""
        from sft_exp.data.sources import source_name

        return dataclasses.replace(
            self, path=self.eval_path, name=source_name(self), max_samples=self.eval_max_samples,
            eval_path=None, eval_max_samples=None,
        )  # fmt: skip


@dataclass
class AgainstFile:
    """One `data.decontamination.against[]` entry: a file of evaluation texts to check the training rows against,
    read like a source (.jsonl/.json/.parquet/.csv file or folder, or a hub dataset id)."""

    path: str
    # The column holding the texts (a dotted path reads its top column); null: every text field of each row.
    column: Optional[str] = None
    # How the report names it; default: the file name.
    name: Optional[str] = None
    split: str = "train"


@dataclass
class Decontamination:
    """`data.decontamination`: every training row checked against the texts the run is evaluated on
    (docs/contamination.md)."""

    # report: count and name matching training rows; drop: also drop them (counted per source, reason
    # `contaminated`); error: stop before the model loads, naming the first; off: no check.
    mode: str = "report"
    # Words per n-gram (s1 and open-r1 use 8). Below 4 nearly any two texts share one.
    ngram: int = 8
    # Files of evaluation texts besides the run's own (the tasks of `evals` and the held-out rows, always checked).
    against: list[AgainstFile] = field(default_factory=list)


@dataclass(kw_only=True)
class DataSettings:
    """Everything `prepare_datasets` needs besides the tokenizer: what `data.*` configures. Its fields are
    the `data` schema (sft_exp.config generates it from this class)."""

    sources: list[Source]
    # Explicit held-out sources; when given, no training rows are held out.
    eval_sources: list[Source] = field(default_factory=list)
    # Fraction (<1) or number (>=1) of the rows of each source without an `eval_path` held out; 0 for none.
    eval_split_size: float = 0.05
    # Where held-out rows come from. source: eval_split_size of each source's rows, before weights apply (a
    # weight above 1 oversamples, below 1 samples the rest). mixture: open-r1's dataset_mixture order: each
    # source's weight (at most 1) is the fraction of its rows taken, and eval_split_size of the mixed rows is
    # held out (a fraction rounds up, as datasets' train_test_split does).
    eval_split_from: str = "source"
    # None: the tokenizer's own; a built-in name (chatml, zephyr); or a path to a .jinja file.
    chat_template: Optional[str] = None
    # A system message put first in every conversation that has none (training and the held-out prompts);
    # rows with their own system message keep it. None: rows as they are.
    system_prompt: Optional[str] = None
    # Tokens per row; longer rows are cut (and counted). None: DEFAULT_MAX_LENGTH, or the model's context
    # if that is smaller (the data line says which).
    max_length: Optional[int] = None
    # None: on for prompt-completion data.
    completion_only_loss: Optional[bool] = None
    assistant_only_loss: bool = False
    # With assistant_only_loss: the roles whose turns are trained (system, user, assistant, tool). A message's
    # own `train: true/false` and `weight` (0: not trained, 2: counts twice) override it per message.
    roles_to_train: list[str] = field(default_factory=lambda: ["assistant"])
    # Whose end-of-turn tokens are trained: turn (each trained turn's), last (the last trained turn's only),
    # all (every turn's, trained or not), none.
    train_on_eot: str = "turn"
    # Only the last trained turn of each conversation teaches (LLaMA-Factory's mask_history).
    last_turn_only: bool = False
    # Assistant reasoning (reasoning_content, <think> blocks) trained as the template renders it, or masked.
    train_reasoning: bool = True
    # A template that drops earlier turns' reasoning (Qwen3): each such trained turn also becomes an example of
    # its own, the conversation up to it, so it trains as rendered at inference. false: such turns are masked.
    split_reasoning_turns: bool = True
    packing: bool = False
    # Padding-free batches without packing: a batch's rows back to back, position_ids restarting per row,
    # no pad tokens. None: on where attention runs per example (sdpa, loaded as sdpa_varlen; flash_attention_2/3).
    padding_free: Optional[bool] = None
    # bfd (best-fit decreasing over the whole dataset) or wrapped.
    packing_strategy: str = "bfd"
    # error: stop at the first bad row with its file and index; drop: drop and count bad rows.
    on_bad_row: str = "error"
    num_proc: Optional[int] = None
    # The check of the training rows against the run's evaluation texts (mode, ngram, against files).
    decontamination: Decontamination = field(default_factory=Decontamination)
    # off: exact duplicates among the training rows are counted; exact: they are dropped, keeping the first.
    deduplicate: str = "off"
    seed: int  # required: the same seed as the run's, so the split and mixture follow it

    def __post_init__(self) -> None:

        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"data.seed={self.seed!r}: must be an integer (the run's `seed`)")
        self.sources = as_sources(self.sources, "data.sources")
        self.eval_sources = as_sources(self.eval_sources or [], "data.eval_sources")
        self.decontamination = as_decontamination(self.decontamination, self.deduplicate)
        check_settings(self)
        check_turn_settings(self)


def as_sources(entries: Any, key: str) -> list[Source]:
    """Sources from `Source`s, dicts like {path: ..., weight: ...}, or bare path strings."""
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of sources like [{{path: train.jsonl}}]")
    from sft_exp.data.sources import refuse_streaming

    sources = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Source):
            entry = dataclasses.asdict(entry)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path") or not isinstance(entry["path"], str):
            raise ConfigError(f"{key}[{i}].path: each source needs a `path` (a file, folder or hub dataset id)")
        refuse_streaming(entry, f"{key}[{i}]")  # not an unknown key: a refusal with the way out
        entry = {k: v for k, v in entry.items() if not k.startswith("_")}  # Hydra's _target_ and friends
        try:
            sources.append(Source(**{**entry, "columns": _columns(entry.get("columns"), f"{key}[{i}].columns")}))
        except TypeError as err:  # a key Source has no field for (Hydra's schema says so earlier)
            raise ConfigError(f"{key}[{i}].{unknown_field_message(err, Source)}") from None
    return sources


def _columns(value: Any, key: str) -> dict | list:
    """A source's `columns`: a mapping (format field -> column name) or a keep-list of column names."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(name, str) and name for name in value):
            raise ConfigError(f"{key}={list(value)!r}: a keep-list names columns, e.g. [messages]")
        return list(value)
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{key}={value!r}: give a mapping {{field: column}} or a list of the columns to keep")
    return dict(value or {})


def unknown_field_message(error: TypeError, component: type) -> str:
    """`Source(**entry)`'s TypeError for a key it has no field for, as "<key>: unknown key; did you mean ...":
    the closest field and the fields there are, read from the dataclass, not a list kept beside it."""
    import re

    match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if match is None:
        raise error
    return unknown_key_message(match.group(1), [f.name for f in dataclasses.fields(component)])


def resolve_max_length(settings: DataSettings, model_context: Optional[int]) -> tuple[DataSettings, str]:
    """`settings` with max_length set, and where the value came from: data.max_length, the model's context
    (when smaller than the default) or the default."""
    if settings.max_length is not None:
        return settings, "data.max_length"
    if model_context and model_context < DEFAULT_MAX_LENGTH:
        return dataclasses.replace(settings, max_length=int(model_context)), "the model's context"
    return dataclasses.replace(settings, max_length=DEFAULT_MAX_LENGTH), "the default"


def check_turn_settings(settings) -> None:
    roles = settings.roles_to_train
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, (list, tuple)) or not roles or any(role not in TRAINABLE_ROLES for role in roles):
        raise ConfigError(
            f"data.roles_to_train={roles!r}: must be a non-empty list of {', '.join(TRAINABLE_ROLES)} "
            "(e.g. data.roles_to_train=[assistant])"
        )
    settings.roles_to_train = list(roles)
    if settings.train_on_eot not in EOT_POLICIES:
        raise ConfigError(f"data.train_on_eot={settings.train_on_eot!r}: use one of {', '.join(EOT_POLICIES)}")
    for key in ("last_turn_only", "train_reasoning", "split_reasoning_turns"):
        if not isinstance(getattr(settings, key), bool):
            raise ConfigError(f"data.{key}={getattr(settings, key)!r}: must be true or false")
    if not settings.assistant_only_loss and not loss_policy(settings).is_default:
        raise ConfigError(
            "data.roles_to_train / train_on_eot / last_turn_only / train_reasoning choose which turns teach, "
            "which needs data.assistant_only_loss=true"
        )


def loss_policy(settings) -> LossPolicy:
    return LossPolicy(
        roles_to_train=tuple(settings.roles_to_train), train_on_eot=settings.train_on_eot,
        last_turn_only=settings.last_turn_only, train_reasoning=settings.train_reasoning,
    )  # fmt: skip


MODES = ("report", "drop", "error", "off")
DEDUPLICATE = ("off", "exact")
# Below this, n-grams are a few common words: nearly any two texts share one.
MIN_NGRAM = 4
KEY = "data.decontamination"


def _against(entries: Any) -> list:
    from sft_exp.data.sources import looks_local

    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{KEY}.against: expected a list of files like [{{path: eval.jsonl, column: question}}]")
    files = []
    for i, entry in enumerate(entries):
        key = f"{KEY}.against[{i}]"
        if isinstance(entry, AgainstFile):
            entry = dataclasses.asdict(entry)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"{key}.path: each entry needs a `path` (a file, folder or hub dataset id)")
        try:
            against = AgainstFile(**{k: v for k, v in entry.items() if not k.startswith("_")})
        except TypeError as err:
            raise ConfigError(f"{key}.{unknown_key_message(err, AgainstFile)}") from None
        if looks_local(against.path) and not Path(against.path).expanduser().exists():
            column = f" (column {against.column!r})" if against.column else ""
            raise ConfigError(f"{key}.path: {against.path}{column} does not exist; check the path")
        files.append(against)
    return files


def as_decontamination(value: Any, deduplicate: Any):
    """A checked Decontamination from itself or a mapping (Hydra's node, or a dict in Python)."""

    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, dict):
        raise ConfigError(f"{KEY}: expected a mapping like {{mode: report, ngram: 8, against: []}}, got {value!r}")
    try:
        settings = Decontamination(**{k: v for k, v in value.items() if not k.startswith("_")})
    except TypeError as err:
        raise ConfigError(f"{KEY}.{unknown_key_message(err, Decontamination)}") from None
    if settings.mode not in MODES:
        raise ConfigError(f"{KEY}.mode={settings.mode!r}: use one of {', '.join(MODES)}")
    if isinstance(settings.ngram, bool) or not isinstance(settings.ngram, int) or settings.ngram < MIN_NGRAM:
        raise ConfigError(
            f"{KEY}.ngram={settings.ngram!r}: must be an integer >= {MIN_NGRAM}; shorter n-grams are runs of common "
            "words that nearly every text shares (s1 and open-r1 use 8)"
        )
    settings.against = _against(settings.against or [])
    if deduplicate not in DEDUPLICATE:
        raise ConfigError(
            f"data.deduplicate={deduplicate!r}: use off (count exact duplicates) or exact (drop them, "
            "keeping the first)"
        )
    return settings


PACKING_STRATEGIES = ("bfd", "wrapped")
EVAL_SPLIT_FROM = ("source", "mixture")  # where held-out rows come from: each source, or the mixed rows
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
    allowed = {name for fmt in chosen for name in fmt.fields}
    for name, column in source.column_mapping.items():
        if name not in allowed:
            reversed_hint = (
                f"`columns` maps a format field to your column, so this is columns.{column}={name}; "
                if column in allowed
                else ""
            )
            raise ConfigError(
                f"{key}.columns.{name}: not a field of format {source.format}; {reversed_hint}"
                f"map these: {', '.join(sorted(allowed))}"
            )
    if not (isinstance(source.weight, (int, float)) and math.isfinite(source.weight) and source.weight > 0):
        raise ConfigError(f"{key}.weight={source.weight}: must be a number > 0 (above 1 oversamples)")
    for count in ("max_samples", "eval_max_samples"):
        value = getattr(source, count)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}.{count}={value}: must be an integer >= 1, or null for all rows")


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
    if settings.completion_only_loss and all(f in FORMATS and not FORMATS[f].has_prompt for f in explicit):
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
        raise ConfigError(
            f"data.packing_strategy={settings.packing_strategy!r}: use one of {', '.join(PACKING_STRATEGIES)}"
        )
    if settings.on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError(f"data.on_bad_row={settings.on_bad_row!r}: use one of {', '.join(BAD_ROW_POLICIES)}")
    if settings.num_proc is not None and settings.num_proc < 1:
        raise ConfigError(f"data.num_proc={settings.num_proc}: must be >= 1, or null for one process")
    if (
        isinstance(settings.eval_split_size, bool)
        or not isinstance(settings.eval_split_size, (int, float))
        or not settings.eval_split_size >= 0
    ):
        raise ConfigError(
            f"data.eval_split_size={settings.eval_split_size}: must be >= 0 (a fraction <1 or a row count)"
        )
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
                "data.eval_split_from=source"
            )
        if source.eval_path is not None:
            raise ConfigError(
                f"data.sources[{i}].eval_path with data.eval_split_from=mixture: the held-out rows come from the "
                "mixed rows; remove eval_path, or use data.eval_split_from=source"
            )


def check_packing_attention(settings, attn_implementation: str | None) -> None:
    if settings.packing and attn_implementation is not None and attn_implementation not in SEPARATING_ATTENTION:
        raise ConfigError(
            f"data.packing=true with model.attn_implementation={attn_implementation}: that attention cannot keep "
            f"packed examples apart; use one of {', '.join(SEPARATING_ATTENTION)} or set data.packing=false"
        )
