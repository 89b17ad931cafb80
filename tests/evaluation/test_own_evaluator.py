"""`evals` holds tasks and evaluators of your own: an entry with a top-level `_target_`
(`+evals.mine._target_=my_package.MyEvaluator`) is built by Hydra and called whenever the trainer evaluates,
beside the tasks. The old `evaluators` group is answered with the `evals` override to type instead."""

from __future__ import annotations

import json

import pytest

from sft_exp.errors import ConfigError
from sft_exp.evaluation import Evaluator, TaskEvaluation, build_evaluators
from tests.helpers import SAMPLE_GENERATIONS, compose, run_sft, tiny_run

THIS = f"{__name__}.CountingEvaluator"


class CountingEvaluator(Evaluator):
    """Scores nothing real: `eval_mine/step`, and each call (step, final, accelerator given) appended to `log`."""

    def __init__(self, log: str, scale: float = 1.0):
        self.log, self.scale = log, scale

    def evaluate(self, model, tokenizer, *, step, final=False, accelerator=None):
        with open(self.log, "a") as f:
            f.write(
                json.dumps(
                    {"step": step, "final": final, "accelerator": accelerator is not None, "vocab": len(tokenizer)}
                )
                + "\n"
            )
        return {"eval_mine/step": self.scale * step}


def test_entries_with_a_target_are_evaluators_the_others_tasks(tmp_path):
    evals = {
        "heldout": {"path": "heldout", "scorer": {"_target_": "sft_exp.evaluation.scorers.token_f1"}},
        "off": None,
        "mine": {"_target_": THIS, "log": str(tmp_path / "calls.jsonl"), "scale": 2},
    }
    tasks, own = build_evaluators(evals, tmp_path / "evals")
    assert isinstance(tasks, TaskEvaluation) and list(tasks.tasks) == ["heldout"]
    assert isinstance(own, CountingEvaluator) and own.scale == 2
    [nothing] = build_evaluators(None, tmp_path)  # evals=none: a TaskEvaluation of no tasks, as before
    assert isinstance(nothing, TaskEvaluation) and not nothing.tasks


def test_a_run_calls_your_evaluator_beside_the_tasks(tmp_path):
    from sft_exp.train import run

    calls, run_dir = tmp_path / "calls.jsonl", tmp_path / "run"
    overrides = [o for o in tiny_run(steps=2, train_rows=16, save_steps=2) if o != "evals=none"]
    cfg = compose(
        [
            *overrides,
            *SAMPLE_GENERATIONS,
            "trainer.eval_steps=1",
            f"+evals.mine._target_={THIS}",
            f"+evals.mine.log={calls}",
            f"run_dir={run_dir}",
        ]
    )
    run(cfg)
    rows = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(r["step"], r["final"]) for r in rows] == [(0, False), (1, False), (2, True)]  # before, each eval, last
    assert all(r["accelerator"] and r["vocab"] > 0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_mine/step"] == 2.0 and summary["eval_mine/step_before"] == 0.0
    assert "eval_heldout/exact_match" in summary  # the default task still scores
    assert (run_dir / "evals" / "heldout" / "step-2.jsonl").is_file()


@pytest.mark.parametrize(
    "override, instead",
    [
        ("evaluators=none", "use evals=none instead of evaluators=none"),
        (f"+evaluators.mine._target_={THIS}", f"use +evals.mine._target_={THIS} instead of +evaluators.mine._target_"),
    ],
)
def test_the_old_evaluators_group_names_the_evals_override(override, instead):
    done = run_sft(override, "logger=none", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "the `evaluators` group is part of `evals`" in output and instead in output
    assert "Tokenizing" not in output and "Traceback" not in output


def test_validate_config_answers_an_evaluators_key():
    from sft_exp.preflight import validate_config

    with pytest.raises(ConfigError, match=r"use \+evals.mine._target_=.* instead of \+evaluators.mine"):
        validate_config(compose([f"+evaluators.mine._target_={THIS}"]))
