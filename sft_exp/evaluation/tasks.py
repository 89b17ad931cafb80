"""Evaluation tasks: what a task is in config (GenerationTaskSettings) and the prompts it loads.

`evals` is a dict of task name -> task. A task's prompts are a file (any format the data pipeline
reads, or explicit prompt/answer columns) or `path: heldout`, the run's held-out rows. Everything
that can be checked without a model (scorer imports, file exists, answer column) is checked when
the task is built, so a mistake stops the run before training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from sft_exp.errors import ConfigError, DataError, did_you_mean
from sft_exp.evaluation.lmeval import LMEvalTaskSettings
from sft_exp.evaluation.scorers import build_scorer, scorer_name

HELDOUT = "heldout"


@dataclass
class GenerationTaskSettings:
    """`type: generate` (the default): prompts -> generations -> a scorer."""

    type: str = "generate"
    # `heldout` (the run's held-out rows), or a local file (.jsonl/.json/.parquet/.csv).
    path: Optional[str] = None
    # Data format of the file (auto, prompt_completion, messages, sharegpt, alpaca) and column mapping,
    # as in data.sources; or explicit columns (prompt_column/answer_column) for files like GSM8K.
    format: str = "auto"
    columns: Dict[str, str] = field(default_factory=dict)
    prompt_column: Optional[str] = None
    answer_column: Optional[str] = None
    # A prompt_column value is put into this template ({prompt}) and sent as a user message.
    prompt_template: str = "{prompt}"
    system_prompt: Optional[str] = None
    # First `limit` prompts only (null: all).
    limit: Optional[int] = None
    # Generation: greedy unless do_sample; num_samples > 1 gives pass@k.
    max_new_tokens: int = 64
    do_sample: bool = False
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    stop: List[str] = field(default_factory=list)
    batch_size: int = 64
    seed: int = 1234
    # pass@k counts a sample as correct when its score is at least this.
    pass_threshold: float = 1.0
    # A short name (exact_match, numeric, regex, substring, token_f1, math_verify) or {_target_: ..., args}.
    scorer: Any = "exact_match"

    def check(self, name: str) -> None:
        for key in ("max_new_tokens", "num_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"evals.{name}.{key} must be at least 1, not {getattr(self, key)}")
        if self.num_samples > 1 and not self.do_sample:
            raise ConfigError(
                f"evals.{name}: num_samples={self.num_samples} needs do_sample=true (greedy samples are all the same)"
            )


@dataclass
class GenerationTask:
    name: str
    settings: GenerationTaskSettings
    scorer: Callable[[str, str], float]
    metric: str  # the scorer's metric name: eval_<task>/<metric>
    examples: Optional[List[dict]] = None  # {"prompt": text or messages, "reference": str}; heldout: set later

    @property
    def source(self) -> str:
        return self.settings.path

    @classmethod
    def build(cls, name: str, settings: GenerationTaskSettings) -> GenerationTask:
        scorer = build_scorer(settings.scorer, f"evals.{name}.scorer")
        task = cls(name, settings, scorer, scorer_name(scorer))
        if not settings.path:
            raise ConfigError(
                f"evals.{name}.path is required: a prompts file, or `heldout` for the run's held-out rows"
            )
        if settings.path != HELDOUT:
            task.examples = load_examples(name, settings)
        return task


class TaskType(NamedTuple):
    """A task type: the dataclass of its settings (its fields are the keys a task accepts) and the
    function that builds the runnable task from (name, settings)."""

    settings: type
    build: Callable[[str, Any], Any]


def _lm_eval_task(name: str, settings):
    from sft_exp.evaluation.lmeval import LMEvalTask  # imports lm_eval only when such a task is configured

    return LMEvalTask(name, settings)


# `type:` -> TaskType. A new task type is one entry: its settings dataclass and its builder.
TASK_TYPES = {
    "generate": TaskType(GenerationTaskSettings, GenerationTask.build),
    "lm_eval": TaskType(LMEvalTaskSettings, _lm_eval_task),
}


def task_settings(name: str, spec: Any):
    """A task's settings from a config mapping, as its type's dataclass; a key the type does not have, a
    missing value or a bad value is a ConfigError naming evals.<name>.<key>."""
    if dataclasses.is_dataclass(spec):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"evals.{name}: expected a mapping of task settings, got {spec!r}")
    kind = spec.get("type", "generate")
    if kind not in TASK_TYPES:
        raise ConfigError(f"evals.{name}.type={kind!r} is not one of {', '.join(TASK_TYPES)}")
    settings_type = TASK_TYPES[kind].settings
    known = [f.name for f in dataclasses.fields(settings_type)]
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ConfigError(
            f"evals.{name}.{unknown[0]}: a `{kind}` task has no such key; "
            f"{did_you_mean(unknown[0], known)}its keys: {', '.join(known)}"
        )
    missing = [key for key, value in spec.items() if value == "???"]
    if missing:
        raise ConfigError(
            f"evals.{name}.{missing[0]} is required; set it, e.g. evals.{name}.{missing[0]}=/path/to/file.jsonl"
        )
    settings = settings_type(**spec)
    settings.check(name)
    return settings


def build_task(name: str, spec: Any):
    """A runnable task from its config; checks everything a model is not needed for."""
    settings = task_settings(name, spec)
    return TASK_TYPES[settings.type].build(name, settings)


def _file_source(settings: GenerationTaskSettings):
    from types import SimpleNamespace

    return SimpleNamespace(path=settings.path, name=None, subset=None, split="train", max_samples=None)


def load_examples(name: str, settings: GenerationTaskSettings) -> List[dict]:
    """The task's prompts and references from its file (the first `limit`)."""
    from sft_exp.data.formats import column_map, detect_format, field_values, normalize_row
    from sft_exp.data.sources import load_source, source_columns
    from sft_exp.data.splits import as_example
    from sft_exp.errors import BadRow

    path = Path(settings.path).expanduser()
    where = f"evals.{name} ({path})"
    if not path.exists():
        raise DataError(f"{where}: no such file; set evals.{name}.path to an existing prompts file")
    raw = load_source(_file_source(settings))
    if settings.limit is not None:
        raw = raw.select(range(min(settings.limit, len(raw))))
    columns = source_columns(raw)
    if settings.prompt_column or settings.answer_column:
        mapping = {"prompt": settings.prompt_column or "prompt", "reference": settings.answer_column or "answer"}
        absent = [column for column in mapping.values() if column not in columns]
        if absent:
            raise DataError(
                f"{where}: the file has no column(s) {absent} (it has {columns}); "
                + _columns_fix(name, settings, columns)
            )
        return [_column_example(where, index, field_values(row, mapping), settings) for index, row in enumerate(raw)]
    fmt = detect_format(settings.format, columns, settings.columns, where)
    if fmt == "text":
        raise DataError(
            f"{where}: plain text rows have no answer to score; use a format with a prompt and an "
            f"answer, or set evals.{name}.prompt_column and answer_column"
        )
    mapping = column_map(fmt, settings.columns)
    examples = []
    for index, row in enumerate(raw):
        try:
            example = as_example(normalize_row(fmt, field_values(row, mapping)))  # text was refused above
            examples.append(_templated(example, settings))
        except BadRow as err:
            raise DataError(f"{where}, row {index}: {err.detail}") from None
    return examples


def _columns_fix(name: str, settings: GenerationTaskSettings, columns: list) -> str:
    """What to set when the task's columns are not the file's: null them for a file of a known format."""
    from sft_exp.data.formats import detect_format
    from sft_exp.errors import UserError

    try:
        fmt = detect_format("auto", columns, settings.columns, name)
    except UserError:
        fmt = None
    if fmt and fmt != "text":
        return (
            f"it is a {fmt} file, read without columns: set evals.{name}.prompt_column=null "
            f"evals.{name}.answer_column=null"
        )
    return f"set evals.{name}.prompt_column / answer_column to the file's columns"


def _templated(example: dict, settings: GenerationTaskSettings) -> dict:
    """A task's prompt_template applies to conversation prompts too: to their last user message."""
    if settings.prompt_template == "{prompt}" or not isinstance(example["prompt"], list):
        return example
    messages = [dict(m) for m in example["prompt"]]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is not None and isinstance(messages[last_user].get("content"), str):
        messages[last_user]["content"] = settings.prompt_template.format(prompt=messages[last_user]["content"])
    return {**example, "prompt": messages}


def _column_example(where: str, index: int, row: dict, settings: GenerationTaskSettings) -> dict:
    for key in ("prompt", "reference"):
        if row[key] is None or (isinstance(row[key], str) and not row[key].strip()):
            raise DataError(f"{where}, row {index}: the {key} column is empty or null")
    text = settings.prompt_template.format(prompt=row["prompt"])
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    return {"prompt": messages + [{"role": "user", "content": text}], "reference": str(row["reference"])}


def build_tasks(tasks: Any) -> Dict[str, Any]:
    """Every task of `evals` (a dict name -> settings; a DictConfig is made plain first)."""
    if tasks is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(tasks, DictConfig):
            tasks = OmegaConf.to_container(tasks, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(tasks, dict):
        raise ConfigError(f"evals: expected a mapping of task name -> task, got {tasks!r}")
    return {name: build_task(name, spec) for name, spec in tasks.items() if spec is not None}
