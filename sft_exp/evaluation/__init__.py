"""Task evaluation: generate from prompts, score the outputs, compare before and after training."""

from sft_exp.evaluation.evaluator import Evaluator, TaskEvaluation, build_evaluators, split_evals
from sft_exp.evaluation.scorers import (
    SCORERS,
    ExactMatch,
    MathVerify,
    NumericAnswer,
    RegexMatch,
    build_scorer,
    exact_match,
    pass_at_k,
    substring,
    token_f1,
)
from sft_exp.evaluation.tasks import TASK_TYPES, GenerationTaskSettings, build_tasks

__all__ = [
    "Evaluator",
    "TaskEvaluation",
    "build_evaluators",
    "split_evals",
    "GenerationTaskSettings",
    "TASK_TYPES",
    "build_tasks",
    "build_scorer",
    "pass_at_k",
    "SCORERS",
    "ExactMatch",
    "MathVerify",
    "NumericAnswer",
    "RegexMatch",
    "exact_match",
    "substring",
    "token_f1",
]
