"""One generation task on one model: split prompts over ranks, generate, gather, score, write, report.

Every rank runs the same number of generate calls (a rank with fewer prompts repeats one and drops
the result), so sharded models (FSDP, ZeRO-3) never wait on a rank that stopped; every rank scores
the gathered outputs, so every rank decides (and fails) the same way.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, List

import torch

from sft_exp.atomic import write_jsonl
from sft_exp.errors import ConfigError, DataError
from sft_exp.evaluation.generate import Generation, generate, model_context, render_prompt
from sft_exp.evaluation.scorers import pass_at_k
from sft_exp.evaluation.tasks import GenerationTask
from sft_exp.run import distributed

log = logging.getLogger(__name__)
# A task's settings handed to generate() as they are.
GENERATION_OPTIONS = ("max_new_tokens", "batch_size", "do_sample", "num_samples", "temperature", "top_p", "stop")


def rank_and_world(accelerator=None) -> tuple:
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return distributed.rank(), torch.distributed.get_world_size()
    return 0, 1


def gather(items: list, world: int) -> list:
    """Every rank's list, concatenated, on every rank (no collective with one process)."""
    if world == 1:
        return items
    parts: List[Any] = [None] * world
    torch.distributed.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def tokenize_prompts(task: GenerationTask, tokenizer, model) -> List[List[int]]:
    """Every prompt's token ids; a prompt that leaves no room for max_new_tokens is an error naming its row."""
    if task.examples is None:
        raise ConfigError(
            f"evals.{task.name}: path: heldout needs the run's held-out rows (TaskEvaluation.use_heldout "
            "was not called); give the task a prompts file instead"
        )
    context = model_context(model)
    max_new = task.settings.max_new_tokens
    ids = []
    for index, example in enumerate(task.examples):
        if not isinstance(example["prompt"], str) and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"evals.{task.name}: the prompts are chat messages but the tokenizer has no chat template; "
                "set data.chat_template (or model.tokenizer) to one that has"
            )
        row = render_prompt(tokenizer, example["prompt"])
        if context is not None and len(row) + max_new > context:
            raise DataError(
                f"evals.{task.name} ({task.source}), row {index}: the prompt is {len(row)} tokens, and with "
                f"max_new_tokens={max_new} that exceeds the model's context of {context} tokens; use a model with a "
                f"longer context, lower evals.{task.name}.max_new_tokens, or shorten the prompt "
                f"(evals.{task.name}.prompt_template, or remove the row from the file)"
            )
        ids.append(row)
    return ids


def _shard(count: int, rank: int, world: int) -> List[int]:
    """This rank's prompt indices, padded (with -1) to the same length on every rank."""
    mine = list(range(rank, count, world))
    return mine + [-1] * (math.ceil(count / world) - len(mine))


def _score(task: GenerationTask, index: int, generation: Generation, reference: str) -> float:
    try:
        value = float(task.scorer(generation.text, reference))
    except Exception as err:
        raise ConfigError(
            f"evals.{task.name} ({task.source}), row {index}: the scorer {task.settings.scorer!r} raised "
            f"{type(err).__name__}: {err} (output {generation.text[:200]!r}, reference {reference[:200]!r})"
        ) from err
    if math.isnan(value):
        raise ConfigError(f"evals.{task.name}, row {index}: the scorer {task.settings.scorer!r} returned NaN")
    return value


def run_generation_task(task: GenerationTask, model, tokenizer, prompt_ids, *, accelerator=None) -> tuple:
    """(metrics, per-example rows) of one task; the same on every rank."""
    settings = task.settings
    rank, world = rank_and_world(accelerator)
    indices = _shard(len(prompt_ids), rank, world)
    mine = [prompt_ids[i if i >= 0 else 0] for i in indices]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # sampling never moves the training RNG
        torch.manual_seed(settings.seed + rank)
        options = {name: getattr(settings, name) for name in GENERATION_OPTIONS}
        generations = generate(model, tokenizer, mine, synced_gpus=world > 1, **options) if mine else []
    done = gather([(i, g) for i, g in zip(indices, generations) if i >= 0], world)
    by_index = dict(done)
    rows = []
    for index, example in enumerate(task.examples):
        samples = by_index[index]
        scores = [_score(task, index, g, example["reference"]) for g in samples]
        row = {"index": index, "prompt": example["prompt"], "reference": example["reference"],
               "output": samples[0].text, "score": sum(scores) / len(scores),
               "stopped": samples[0].stopped, "truncated": samples[0].truncated}  # fmt: skip
        if len(samples) > 1:
            row["samples"] = [
                {"output": g.text, "score": s, "stopped": g.stopped, "truncated": g.truncated}
                for g, s in zip(samples, scores)
            ]
        rows.append(row)
    return _metrics(task, rows, by_index), rows


def _metrics(task: GenerationTask, rows: list, by_index: dict) -> dict:
    prefix = f"eval_{task.name}/"
    n = task.settings.num_samples
    generations = [g for samples in by_index.values() for g in samples]
    metrics = {
        prefix + task.metric: sum(row["score"] for row in rows) / len(rows) if rows else math.nan,
        prefix + "truncated": float(sum(g.truncated for g in generations)),
        prefix + "output_tokens": sum(g.num_tokens for g in generations) / max(1, len(generations)),
    }
    if n > 1:
        for k in sorted({1, n}):
            passed = [
                pass_at_k(n, sum(s["score"] >= task.settings.pass_threshold for s in row["samples"]), k) for row in rows
            ]
            metrics[f"{prefix}pass@{k}"] = sum(passed) / len(passed) if passed else math.nan
    return metrics


def write_rows(rows: list, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows, ensure_ascii=False)


def prompt_text(prompt) -> str:
    """What a person reads as the prompt: the text, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
    return users[-1] if users else json.dumps(prompt)


def print_examples(task_name: str, rows: list, count: int, printer=None) -> None:
    printer = printer or log.info
    for row in rows[:count]:
        mark = "ok " if row["score"] >= 1 else "   "
        cut = " [truncated]" if row["truncated"] else ""
        printer(
            f"{task_name} {mark}| {prompt_text(row['prompt'])[-200:]!r} -> {row['output'][:300]!r}{cut} "
            f"(reference {row['reference'][:200]!r}, score {row['score']:.2f})"
        )
