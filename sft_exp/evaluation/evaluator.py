"""The run's evaluators, scored whenever the Trainer evaluates: TaskEvaluation (the tasks of `evals`) and yours.

`evals` holds both: an entry with a top-level `_target_` is an evaluator of your own (built by Hydra), any
other entry is a task (tasks have no `_target_` key of their own; a scorer's `_target_` sits under `scorer`).

An evaluator, not a callback: SFTTrainer receives it as `evaluators=[...]` and calls `evaluate(model, tokenizer, step=..., final=..., accelerator=...)` on every rank
(before training, every trainer.eval_steps, at the end) and merges the returned
`eval_<task>/<metric>` values into its eval log row. Rank 0 writes each example's prompt, reference,
output and score to `<output_dir>/<task>/step-<N>.jsonl`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from sft_exp.errors import ConfigError
from sft_exp.evaluation.tasks import HELDOUT, GenerationTask, build_tasks
from sft_exp.run import distributed

log = logging.getLogger(__name__)
HELDOUT_FILE = "heldout_examples.jsonl"


class Evaluator:
    """What SFTTrainer's `evaluators` are: `evaluate` returns `{metric: value}` merged into the eval log row
    (called on every rank); `use_heldout` receives the run's held-out rows once the data is prepared."""

    def use_heldout(self, examples: List[dict]) -> None:
        return None

    def eval_texts(self) -> Optional[list]:
        """The texts it scores (sft_exp.data.contamination.EvalTexts), for the training rows' contamination
        check; None: unknown (the run's report names it as not checked)."""
        return None

    def evaluate(self, model, tokenizer, *, step: int, final: bool = False, accelerator=None) -> Dict[str, float]:
        raise NotImplementedError


class TaskEvaluation(Evaluator):
    """Generation (and lm-eval) tasks on the model being trained. `tasks`: the `evals` config
    (task name -> settings); every task is built and checked here, before the model loads."""

    def __init__(self, tasks: Optional[Dict[str, Any]], output_dir: str, print_examples: int = 4):
        self.tasks = build_tasks(tasks)
        self.output_dir = Path(output_dir)
        self.print_examples = print_examples
        self._prompt_ids: Dict[str, list] = {}  # tokenized once per task, at the first evaluation

    def use_heldout(self, examples: List[dict]) -> None:
        """The run's held-out rows ({prompt, reference}) for every `path: heldout` task (first `limit`)."""
        heldout = [t for t in self.tasks.values() if isinstance(t, GenerationTask) and t.source == HELDOUT]
        if heldout and not examples:
            raise ConfigError(
                f"evals.{heldout[0].name} scores the run's held-out rows, but this run holds none out; set "
                "data.eval_split_size (or an eval_path) or switch the task off (evals=none)"
            )
        for task in heldout:
            task.examples = list(examples[: task.settings.limit] if task.settings.limit else examples)
            self._prompt_ids.pop(task.name, None)
        if heldout and distributed.rank() == 0:  # `python -m sft_exp.evaluate <run folder>` scores the same rows later
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / HELDOUT_FILE).open("w") as f:
                for example in examples:
                    f.write(json.dumps({"prompt": example["prompt"], "reference": example["reference"]}) + "\n")

    def describe_tasks(self) -> Dict[str, dict]:
        """Per task: how many prompts it scores and from where (run_info.json `evaluations`)."""
        out = {}
        for task in self.tasks.values():
            if isinstance(task, GenerationTask):
                samples = {"samples_per_prompt": task.settings.num_samples} if task.settings.num_samples > 1 else {}
                source = task.source if task.source == HELDOUT else str(Path(task.source).expanduser())
                out[task.name] = {"n": len(task.examples or []), "unit": "prompts", "source": source, **samples}
            else:
                out[task.name] = {
                    "n": task.settings.limit,
                    "unit": "documents per harness task",
                    "source": "lm-eval " + ", ".join(task.settings.lm_eval_tasks),
                }
        return out

    def eval_texts(self) -> list:
        from sft_exp.evaluation.texts import task_texts

        return [texts for task in self.tasks.values() for texts in task_texts(task)]

    def evaluate(self, model, tokenizer, *, step: int, final: bool = False, accelerator=None) -> Dict[str, float]:
        """Every task's metrics, `eval_<task>/<metric>`; call on every rank. The model's train/eval mode is kept."""
        from sft_exp.evaluation.runner import print_examples, run_generation_task, tokenize_prompts, write_rows

        if not self.tasks:
            return {}
        was_training = model.training
        model.eval()
        metrics: Dict[str, float] = {}
        try:
            for task in self.tasks.values():  # every prompt is checked before any task generates
                if isinstance(task, GenerationTask) and task.name not in self._prompt_ids:
                    self._prompt_ids[task.name] = tokenize_prompts(task, tokenizer, model)
            for task in self.tasks.values():
                if not isinstance(task, GenerationTask):
                    metrics.update(task.evaluate(model, tokenizer, accelerator=accelerator))
                    continue
                settings = task.settings
                if distributed.rank() == 0:  # generation can take minutes on a CPU: say what is running
                    log.info(
                        "evaluating %s at step %d: %d prompts, batches of %d, up to %d new tokens each",
                        task.name,
                        step,
                        len(self._prompt_ids[task.name]),
                        settings.batch_size,
                        settings.max_new_tokens,
                    )
                task_metrics, rows = run_generation_task(
                    task, model, tokenizer, self._prompt_ids[task.name], accelerator=accelerator
                )
                metrics.update(task_metrics)
                if distributed.rank() == 0 and (accelerator is None or accelerator.is_main_process):
                    write_rows(rows, self.output_dir / task.name / f"step-{step}.jsonl")
                    if final and self.print_examples:
                        print_examples(task.name, rows, self.print_examples)
        finally:
            model.train(was_training)
        return metrics


def is_evaluator(spec: Any) -> bool:
    """Whether an entry of `evals` is an evaluator of your own (a top-level `_target_`), not a task."""
    return isinstance(spec, Mapping) and "_target_" in spec


def split_evals(evals: Any) -> tuple[dict, dict]:
    """`evals` (a DictConfig or dict; None: nothing) as (tasks, evaluators of your own), each name -> entry;
    entries set to null are switched off. The tasks are plain and resolved; the evaluators stay as given."""
    from omegaconf import DictConfig, OmegaConf

    if evals is None:
        return {}, {}
    if not isinstance(evals, Mapping):
        raise ConfigError(f"evals: expected a mapping of name -> task or evaluator, got {evals!r}")
    tasks, own = {}, {}
    for name, spec in evals.items():
        if spec is None:
            continue
        if is_evaluator(spec):
            own[name] = spec
        else:
            tasks[name] = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
    return tasks, own


def build_evaluators(evals: Any, output_dir: str | Path) -> list:
    """The run's evaluators from its `evals` config: a TaskEvaluation of its tasks (every task built and
    checked here, before the model loads; writing under `output_dir`), then each evaluator of your own,
    built from its `_target_` (`+evals.mine._target_=my_package.MyEvaluator`), in the order given."""
    from hydra.utils import instantiate

    tasks, own = split_evals(evals)
    return [
        TaskEvaluation(tasks, output_dir=str(output_dir)),
        *(instantiate(spec, _convert_="all") for spec in own.values()),
    ]
