"""lm-evaluation-harness on the in-memory model, offline: a local task YAML over a file the tests ship."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sft_exp.errors import ConfigError
from sft_exp.evaluation import TaskEvaluation

DATA = Path(__file__).parent / "data" / "toy_choice.jsonl"

TASK_YAML = """\
task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _expected_accuracy(model, tokenizer) -> float:
    """Multiple-choice accuracy computed here: the choice with the highest log-likelihood after ' '."""
    correct = 0
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    for row in rows:
        context = tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(row["question"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(rows)


def test_lm_eval_task_runs_on_the_model_in_memory(tmp_path, model, tokenizer):
    pytest.importorskip("lm_eval")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "toy_choice.yaml").write_text(TASK_YAML.format(data=DATA))
    evaluation = TaskEvaluation(
        {
            "harness": {
                "type": "lm_eval",
                "lm_eval_tasks": ["toy_choice"],
                "include_path": str(tasks_dir),
                "batch_size": 4,
            }
        },
        output_dir=str(tmp_path / "evals"),
    )
    model.train()
    metrics = evaluation.evaluate(model, tokenizer, step=0)
    assert model.training
    model.eval()
    assert set(metrics) == {"eval_harness/toy_choice/acc"}
    assert metrics["eval_harness/toy_choice/acc"] == pytest.approx(_expected_accuracy(model, tokenizer))


def test_lm_eval_task_config_errors(tmp_path):
    pytest.importorskip("lm_eval")
    with pytest.raises(ConfigError, match=r"evals.h.lm_eval_tasks is empty"):
        TaskEvaluation({"h": {"type": "lm_eval"}}, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"evals.h.include_path=/nowhere: no such folder"):
        TaskEvaluation(
            {"h": {"type": "lm_eval", "lm_eval_tasks": ["x"], "include_path": "/nowhere"}}, output_dir=str(tmp_path)
        )


def test_harness_metric_names():
    from sft_exp.evaluation.lmeval import harness_metrics

    results = {
        "gsm8k": {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.25,
            "exact_match_stderr,strict-match": 0.1,
            "exact_match,flexible-extract": 0.5,
        },
        "toy": {"sample_len": 6, "acc,none": 0.5, "acc_stderr,none": 0.2, "acc_norm,none": float("nan")},
    }
    metrics = harness_metrics("bench", results)
    assert metrics["eval_bench/gsm8k/exact_match_strict-match"] == 0.25
    assert metrics["eval_bench/gsm8k/exact_match_flexible-extract"] == 0.5
    assert metrics["eval_bench/toy/acc"] == 0.5 and math.isnan(metrics["eval_bench/toy/acc_norm"])
    assert len(metrics) == 4
