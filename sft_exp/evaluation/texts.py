"""The texts each evaluation scores, for the contamination check of the training rows (docs/contamination.md).

A generation task's items are its prompt turns and its reference, without the task's own wording (its
`prompt_template` around the prompt and its `system_prompt` are the run's, not the test's: a training set
written with the same instruction would otherwise match every item). A `path: heldout` task scores the
run's held-out rows, which the check reads itself. An lm-eval task's documents are read when the harness
can load them offline (their question and correct answer); one that cannot, and an evaluator sft_exp does
not know, is named in the report as not checked.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

from sft_exp.data.ngrams import HELD_OUT, EvalTexts, NotChecked
from sft_exp.evaluation.tasks import HELDOUT, GenerationTask


def evaluation_texts(evaluators) -> list:
    """EvalTexts (or NotChecked) for every evaluator of a run: what its scores are measured on."""
    out = []
    for evaluator in evaluators:
        texts = evaluator.eval_texts() if hasattr(evaluator, "eval_texts") else None
        if texts is None:
            out.append(
                NotChecked(
                    type(evaluator).__name__,
                    "an evaluator whose texts sft_exp cannot read; name its "
                    "files in data.decontamination.against to check them",
                )
            )
        else:
            out += texts
    return out


def task_texts(task) -> list:
    """A task of `evals` as EvalTexts / NotChecked."""
    if isinstance(task, GenerationTask):
        if task.source == HELDOUT:
            return [EvalTexts(task.name, HELD_OUT, [])]  # the held-out rows: read by the check itself
        items = [example_texts(example, task.settings) for example in task.examples or []]
        return [EvalTexts(task.name, str(Path(task.source).expanduser()), items)]
    return lm_eval_texts(task)


def _without_template(text: str, template: str) -> str:
    for wording in template.split("{prompt}"):
        if wording.strip():
            text = text.replace(wording, "\n")
    return text


def example_texts(example: dict, settings) -> list[str]:
    """One item's texts: its prompt turns (the task's template and system prompt taken out), its reference."""
    prompt, template = example["prompt"], settings.prompt_template
    if isinstance(prompt, str):
        return [_without_template(prompt, template), str(example["reference"])]
    texts = []
    for message in prompt:
        content = message.get("content")
        if message.get("role") == "system" and content == settings.system_prompt:
            continue
        if isinstance(content, list):  # content parts: their text
            content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str):
            texts.append(_without_template(content, template) if message.get("role") == "user" else content)
    return [*texts, str(example["reference"])]


def _leaf_tasks(tasks: dict) -> Iterator[tuple[str, object]]:
    """(name, task) of a harness task dict, through its groups."""
    for key, value in tasks.items():
        if isinstance(value, dict):
            yield from _leaf_tasks(value)
        else:
            yield getattr(key, "group_name", None) or str(key), value


def _target_text(task, doc) -> str:
    target = task.doc_to_target(doc)
    if getattr(task, "OUTPUT_TYPE", None) == "multiple_choice":
        choices = task.doc_to_choice(doc)
        targets = target if isinstance(target, list) else [target]
        return "\n".join(str(choices[t]) if isinstance(t, int) and 0 <= t < len(choices) else str(t) for t in targets)
    return "\n".join(map(str, target)) if isinstance(target, list) else str(target)


def lm_eval_texts(task) -> list:
    """An lm-eval task's documents (first `limit`), loaded offline; NotChecked where the harness cannot."""
    from sft_exp.compat import datasets_offline

    try:
        from lm_eval.tasks import get_task_dict

        with datasets_offline():
            harness_tasks = list(_leaf_tasks(get_task_dict(list(task.settings.lm_eval_tasks), task.task_manager())))
    except Exception as err:
        return [NotChecked(task.name, f"lm-eval could not load its documents offline ({_first_line(err)})")]
    out = []
    for name, harness_task in harness_tasks:
        label = f"{task.name}/{name}"
        try:
            with datasets_offline():
                docs = list(itertools.islice(harness_task.eval_docs, task.settings.limit))
            items = [[str(harness_task.doc_to_text(doc)), _target_text(harness_task, doc)] for doc in docs]
        except Exception as err:
            out.append(NotChecked(label, f"lm-eval could not read its documents offline ({_first_line(err)})"))
            continue
        out.append(EvalTexts(label, f"lm-eval task {name}", items))
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
