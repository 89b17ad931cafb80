"""What each evaluation hands the contamination check: a task's items without the run's own wording, the
held-out rows by name, an lm-eval task's documents when the harness reads them offline, and, for what
cannot be read, a name and a reason."""

from __future__ import annotations

import json

import pytest

from sft_exp.data.contamination import EvalTexts, NotChecked
from sft_exp.evaluation import TaskEvaluation
from sft_exp.evaluation.texts import evaluation_texts
from tests.evaluation.test_lmeval import DATA, TASK_YAML  # toy_choice: a local task over a file shipped here


def test_a_generation_task_gives_its_items_without_its_template_and_system_prompt(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text(json.dumps({"question": "Max bought stamps.", "answer": "#### 3"}) + "\n")
    tasks = {"quiz": {"path": str(path), "prompt_column": "question", "answer_column": "answer",
                      "prompt_template": "Question: {prompt}\nThink step by step.", "system_prompt": "Be brief."},
             "heldout": {"path": "heldout"}}  # fmt: skip
    texts = TaskEvaluation(tasks, output_dir=str(tmp_path)).eval_texts()
    assert texts[0] == EvalTexts("quiz", str(path), [["\nMax bought stamps.\n", "#### 3"]])
    assert texts[1] == EvalTexts("heldout", "held-out rows", [])  # the check reads the held-out rows itself


def test_an_evaluator_of_unknown_texts_is_not_checked():
    class Mine:
        def evaluate(self, model, tokenizer, **kwargs):
            return {}

    (only,) = evaluation_texts([Mine()])
    assert isinstance(only, NotChecked) and only.name == "Mine" and "data.decontamination.against" in only.reason


def test_lm_eval_documents_are_read_offline_or_named_as_not_checked(tmp_path):
    pytest.importorskip("lm_eval")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    local = TASK_YAML.format(data=DATA)
    (tasks_dir / "toy.yaml").write_text(local)
    far = local.replace("task: toy_choice", "task: far").replace(
        "dataset_path: json", "dataset_path: no-such-org/no-such"
    )
    (tasks_dir / "far.yaml").write_text(far)  # its documents are on the hub: not readable offline
    evaluation = TaskEvaluation({
        "local": {"type": "lm_eval", "lm_eval_tasks": ["toy_choice"], "include_path": str(tasks_dir), "limit": 2},
        "hub": {"type": "lm_eval", "lm_eval_tasks": ["far"], "include_path": str(tasks_dir)},
    }, output_dir=str(tmp_path / "evals"))  # fmt: skip
    local, hub = evaluation.eval_texts()
    assert local == EvalTexts(
        "local/toy_choice",
        "lm-eval task toy_choice",
        [["The color of the sky on a clear day is", "blue"], ["Two plus two equals", "four"]],
    )
    assert isinstance(hub, NotChecked) and hub.name == "hub"
    assert hub.reason.startswith("lm-eval could not load its documents offline (")
