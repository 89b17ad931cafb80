"""`python -m sft_exp.evaluate ... evals=gsm8k` on a messages file: the preset's columns are named as the
thing to null, `format=messages` (a task key) is accepted, and the task's prompt_template applies."""

from __future__ import annotations

import json

import pytest

from sft_exp.errors import DataError
from sft_exp.evaluation.tasks import build_tasks
from sft_exp.tools.evaluate import task_config


@pytest.fixture
def messages_file(tmp_path):
    path = tmp_path / "gsm_messages.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i}+1?"},
                {"role": "assistant", "content": f"#### {i + 1}"},
            ]
        }
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_preset_columns_on_a_messages_file_name_the_fix(messages_file):
    with pytest.raises(
        DataError, match="it is a messages file.*evals.gsm8k.prompt_column=null evals.gsm8k.answer_column=null"
    ):
        build_tasks(task_config(None, ["evals=gsm8k", f"evals.gsm8k.path={messages_file}"]))


def test_a_messages_file_scores_with_the_task_prompt_template(messages_file):
    tasks = build_tasks(
        task_config(
            None,
            [
                "evals=gsm8k",
                f"evals.gsm8k.path={messages_file}",
                "evals.gsm8k.prompt_column=null",
                "evals.gsm8k.answer_column=null",
                "evals.gsm8k.format=messages",
            ],
        )
    )
    example = tasks["gsm8k"].examples[0]
    assert example["reference"] == "#### 1"
    assert example["prompt"][-1]["content"].startswith("What is 0+1?\nSolve it step by step")
