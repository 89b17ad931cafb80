"""Tasks from config: the `evals` group, prompts from files of every kind, and bad input named clearly."""

from __future__ import annotations

import json

import pytest

from sft_exp.errors import ConfigError, DataError
from sft_exp.evaluation import TaskEvaluation, build_tasks
from sft_exp.paths import config_dir
from tests.evaluation.helpers import demo_eval_file, write_jsonl


def _compose(tmp_path, overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    (tmp_path / "primary.yaml").write_text(
        f"defaults:\n  - evals: heldout\n  - _self_\nhydra:\n  searchpath:\n    - file://{config_dir()}\n"
    )
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        cfg = compose("primary", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True).get("evals") or {}


def test_evals_group_selects_several_tasks_at_once(tmp_path):
    assert list(_compose(tmp_path, [])) == ["heldout"]
    both = _compose(tmp_path, ["evals=[heldout,gsm8k]", "evals.gsm8k.path=/data/gsm8k.jsonl", "evals.gsm8k.limit=5"])
    assert list(both) == ["heldout", "gsm8k"]
    assert both["gsm8k"]["path"] == "/data/gsm8k.jsonl" and both["gsm8k"]["limit"] == 5
    assert both["heldout"]["scorer"] == "exact_match"
    assert _compose(tmp_path, ["evals=none"]) == {}


def test_gsm8k_path_is_required(tmp_path):
    tasks = _compose(tmp_path, ["evals=gsm8k"])
    with pytest.raises(ConfigError, match=r"evals.gsm8k.path is required; set it"):
        build_tasks(tasks)


def test_gsm8k_file_prompts_and_answers(tmp_path):
    from tests.helpers import TEST_ASSETS

    tasks = _compose(
        tmp_path,
        ["evals=gsm8k", f"evals.gsm8k.path={TEST_ASSETS}/eval/gsm8k_test_first50.jsonl", "evals.gsm8k.limit=3"],
    )
    examples = build_tasks(tasks)["gsm8k"].examples
    assert len(examples) == 3
    assert examples[0]["prompt"][0]["role"] == "user"
    assert examples[0]["prompt"][0]["content"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert "####" in examples[0]["prompt"][0]["content"]  # the template asks for the answer format
    assert examples[0]["reference"].endswith("#### 18")


def test_prompts_from_any_data_format(tmp_path):
    messages = build_tasks({"t": {"path": demo_eval_file(), "limit": 2}})["t"].examples
    first = json.loads(open(demo_eval_file()).readline())["messages"]
    assert messages[0] == {"prompt": first[:-1], "reference": first[-1]["content"]}
    assert len(messages) == 2
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"task": "Add 2 and 3", "extra": "", "out": "5"}])
    examples = build_tasks(
        {
            "t": {
                "path": alpaca,
                "format": "alpaca",
                "columns": {"instruction": "task", "input": "extra", "output": "out"},
            }
        }
    )["t"].examples
    assert examples == [{"prompt": [{"role": "user", "content": "Add 2 and 3"}], "reference": "5"}]
    text_pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    assert build_tasks({"t": {"path": text_pc}})["t"].examples == [{"prompt": "2+2=", "reference": "4"}]


def test_explicit_columns_with_template_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"q": "1+1?", "a": 2}, {"q": "2+2?", "a": 4}])
    task = build_tasks(
        {
            "t": {
                "path": path,
                "prompt_column": "q",
                "answer_column": "a",
                "prompt_template": "Q: {prompt}",
                "system_prompt": "Be brief.",
            }
        }
    )["t"]
    assert task.examples[1] == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 2+2?"}],
        "reference": "4",
    }


@pytest.mark.parametrize("spec, error, message", [
    ({"path": "/nowhere/gsm8k.jsonl"}, DataError, r"evals.t \(/nowhere/gsm8k.jsonl\): no such file"),
    ({"path": "{qa}", "prompt_column": "q", "answer_column": "answer"}, DataError,
     r"evals.t \(.*qa.jsonl\): the file has no column\(s\) \['answer'\] \(it has \['q', 'a'\]\)"),
    ({"path": "{qa}", "prompt_column": "q", "answer_column": "a"}, DataError, r"qa.jsonl\), row 1: the reference column is empty"),
    ({"path": "{text}"}, DataError, r"evals.t .*text.jsonl.*plain text rows have no answer"),
    ({"path": "{qa}", "scorer": "exakt"}, ConfigError, r"evals.t.scorer: unknown scorer 'exakt'"),
    ({"path": "{qa}", "scorer": {"_target_": "nowhere.score"}}, ConfigError, r"evals.t.scorer: cannot import"),
    ({"path": "{qa}", "max_new_tokenz": 3}, ConfigError, r"evals.t.max_new_tokenz: a .generate. task has no such key; did you mean .max_new_tokens."),
    ({"path": "{qa}", "num_samples": 4}, ConfigError, r"evals.t: num_samples=4 needs do_sample=true"),
    ({"path": "{qa}", "type": "mystery"}, ConfigError, r"evals.t.type='mystery' is not one of"),
    ({}, ConfigError, r"evals.t.path is required"),
])  # fmt: skip
def test_bad_tasks_fail_when_built_naming_task_file_and_row(tmp_path, spec, error, message):
    files = {
        "qa": write_jsonl(tmp_path / "qa.jsonl", [{"q": "x", "a": "1"}, {"q": "y", "a": None}]),
        "text": write_jsonl(tmp_path / "text.jsonl", [{"text": "just text"}]),
    }
    spec = {k: v.format(**files) if isinstance(v, str) and v.startswith("{") else v for k, v in spec.items()}
    with pytest.raises(error, match=message):
        TaskEvaluation({"t": spec}, output_dir=str(tmp_path / "evals"))


def test_heldout_rows_come_from_the_run(tmp_path):
    evaluation = TaskEvaluation({"heldout": {"path": "heldout", "limit": 2}}, output_dir=str(tmp_path))
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "reference": str(i)} for i in range(3)]
    evaluation.use_heldout(rows)
    assert evaluation.tasks["heldout"].examples == rows[:2]
    saved = [json.loads(line) for line in (tmp_path / "heldout_examples.jsonl").read_text().splitlines()]
    assert saved == rows  # every held-out row, for `python -m sft_exp.evaluate <run folder>`
    with pytest.raises(ConfigError, match="evals.heldout scores the run's held-out rows, but this run holds none out"):
        evaluation.use_heldout([])


def test_no_tasks_is_a_no_op(tmp_path, model, tokenizer):
    evaluation = TaskEvaluation({}, output_dir=str(tmp_path))
    evaluation.use_heldout([])
    assert evaluation.evaluate(model, tokenizer, step=0) == {}
    assert not any(tmp_path.iterdir())


def test_a_scorers_target_is_handed_to_the_task_not_called(tmp_path):
    """A `_target_` under `scorer:` keeps the entry a task: TaskEvaluation imports the function, never calls it."""
    from sft_exp.evaluation import build_evaluators
    from sft_exp.evaluation.scorers import token_f1
    from tests.helpers import compose

    cfg = compose(["evals.heldout.scorer={_target_:sft_exp.evaluation.scorers.token_f1}", "logger=none"])
    [evaluation] = build_evaluators(cfg.evals, tmp_path / "evals")
    assert isinstance(evaluation, TaskEvaluation) and evaluation.output_dir == tmp_path / "evals"
    assert evaluation.tasks["heldout"].scorer is token_f1
    assert evaluation.tasks["heldout"].metric == "token_f1"
