"""What each reported score rests on: how many rows or prompts, from which file (run_info.json `evaluations`).

eval_loss, eval_nll, eval_mean_token_accuracy, ... are measured on the eval set (the held-out rows);
eval_<task>/<metric> on the task's prompts. The model card and the report print both beside every score.
"""

from __future__ import annotations

from typing import Optional

EVAL_SET = "eval set"


def evaluation_record(evaluators: list, stats: dict) -> dict:
    """{"eval set": {"n", "unit", "source"}, "<task>": {...}} for run_info.json."""
    files = ", ".join(dict.fromkeys(origin["path"] for origin in stats.get("eval_from", []) if origin.get("rows")))
    record = {}
    if stats.get("eval_rows"):
        record[EVAL_SET] = {"n": stats["eval_rows"], "unit": "rows", "source": files}
    for evaluator in evaluators:
        describe = getattr(evaluator, "describe_tasks", None)
        for name, task in (describe() if describe else {}).items():
            held_out = task["source"] == "heldout"
            record[name] = {**task, "source": f"held-out rows ({files})" if held_out else task["source"]}
    return record


def basis(key: str, evaluations: dict) -> Optional[dict]:
    """The record an eval_* metric rests on: eval_<task>/... the task's, any other eval_* the eval set's."""
    if not key.startswith("eval_"):
        return None
    name = key[len("eval_") :].split("/", 1)[0] if "/" in key else EVAL_SET
    return evaluations.get(name)


def record_cells(record: Optional[dict]) -> tuple[str, str]:
    """("64 prompts", "/data/gsm8k_test.jsonl") for a table; ("", "") when the run did not record it."""
    if not record:
        return "", ""
    n = "?" if record.get("n") is None else f"{record['n']:,}"
    return f"{n} {record.get('unit', '')}".strip(), str(record.get("source", ""))


def basis_cells(key: str, evaluations: dict) -> tuple[str, str]:
    """record_cells of what metric `key` rests on."""
    return record_cells(basis(key, evaluations))


def whole_run_loss(log_history: list) -> Optional[float]:
    """Mean training loss per optimizer step over the whole run: each logged window's mean `loss` weighted by
    its steps (what the Trainer's train_loss is for a run that never stopped)."""
    total, steps, last = 0.0, 0, 0
    for row in log_history:
        if "loss" in row and "step" in row and row["step"] > last:
            total += float(row["loss"]) * (row["step"] - last)
            steps += row["step"] - last
            last = row["step"]
    return total / steps if steps else None
