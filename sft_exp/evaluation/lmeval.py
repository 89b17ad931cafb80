"""lm-evaluation-harness as a task backend: `type: lm_eval` runs lm_eval.simple_evaluate on the model
in memory (through its HFLM wrapper), no saving or reloading.

  evals.mmlu={type: lm_eval, lm_eval_tasks: [mmlu], num_fewshot: 5, limit: 100}
  evals.mine={type: lm_eval, lm_eval_tasks: [my_task], include_path: /path/to/task/yamls}

Metrics come back as eval_<task>/<harness task>/<metric> (e.g. eval_mmlu/mmlu/acc). With several
ranks every rank runs the same whole evaluation (the harness does not split an in-memory model's
work), so sharded models stay in step; rank 0's numbers are the ones logged (all are equal).
Needs the extra: pip install 'sft_exp[lmeval]'.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class LMEvalTaskSettings:
    """`type: lm_eval`: harness task names, a folder of local task YAMLs, few-shot count, extra arguments
    for lm_eval.simple_evaluate."""

    type: str = "lm_eval"
    lm_eval_tasks: List[str] = field(default_factory=list)
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    # First `limit` examples of each harness task (null: all).
    limit: Optional[int] = None
    batch_size: int = 64
    seed: int = 1234
    lm_eval_args: Dict[str, Any] = field(default_factory=dict)

    def check(self, name: str) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"evals.{name}.batch_size must be at least 1, not {self.batch_size}")


class LMEvalTask:
    def __init__(self, name: str, settings):
        self.name, self.settings = name, settings
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"evals.{name}: type lm_eval needs lm-evaluation-harness: pip install 'sft_exp[lmeval]'"
            ) from None
        if not settings.lm_eval_tasks:
            raise ConfigError(f"evals.{name}.lm_eval_tasks is empty: name the harness tasks, e.g. [hellaswag]")
        if settings.include_path and not Path(settings.include_path).expanduser().is_dir():
            raise ConfigError(f"evals.{name}.include_path={settings.include_path}: no such folder of task YAMLs")
        self._task_manager = None

    def task_manager(self):
        """Built once (it indexes every task YAML the harness ships; unknown task names fail here)."""
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            include = str(Path(self.settings.include_path).expanduser()) if self.settings.include_path else None
            manager = TaskManager(include_path=include, include_defaults=False) if include else None
            if manager is None or not all(manager.match_tasks([t]) for t in self.settings.lm_eval_tasks):
                manager = TaskManager(include_path=include)  # indexing the harness's own tasks takes a while
            unknown = [t for t in self.settings.lm_eval_tasks if not manager.match_tasks([t])]
            if unknown:
                raise ConfigError(
                    f"evals.{self.name}.lm_eval_tasks: lm-eval knows no task(s) {unknown}"
                    + ("" if include else "; local task YAMLs need evals.<task>.include_path")
                )
            self._task_manager = manager
        return self._task_manager

    def evaluate(self, model, tokenizer, *, accelerator=None) -> dict:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        settings = self.settings
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=settings.batch_size,
            max_length=getattr(model.config, "max_position_embeddings", None),
        )
        results = simple_evaluate(
            model=lm,
            tasks=list(settings.lm_eval_tasks),
            num_fewshot=settings.num_fewshot,
            limit=settings.limit,
            task_manager=self.task_manager(),
            random_seed=settings.seed,
            numpy_random_seed=settings.seed,
            torch_random_seed=settings.seed,
            fewshot_random_seed=settings.seed,
            log_samples=False,
            **dict(settings.lm_eval_args),
        )
        return harness_metrics(self.name, (results or {}).get("results", {}))


def harness_metrics(name: str, results: dict) -> dict:
    """{"eval_<name>/<harness task>/<metric>": value} from simple_evaluate's results (stderr and bookkeeping
    such as sample_len left out;
    a filter other than `none` is kept in the name: exact_match_strict-match)."""
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or "stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            label = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
            metrics[f"eval_{name}/{task}/{label}"] = float(value) if not math.isnan(value) else math.nan
    return metrics
