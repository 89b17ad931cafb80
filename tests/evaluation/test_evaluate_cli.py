"""`python -m sft_exp.evaluate`: a run folder's tasks on its saved model (full or LoRA adapter), no training."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from sft_exp.evaluation import TaskEvaluation
from sft_exp.tools.evaluate import main
from tests.evaluation.helpers import demo_eval_file, tiny_model, write_jsonl


def _run_folder(tmp_path, model, tokenizer, evals: dict):
    run = tmp_path / "run"
    (run / "evals").mkdir(parents=True)
    model.save_pretrained(str(run / "model"))
    tokenizer.save_pretrained(str(run / "model"))
    OmegaConf.save(OmegaConf.create({"seed": 1, "evals": evals}), run / "resolved_config.yaml")
    (run / "summary.json").write_text(json.dumps({"global_step": 12, "status": "completed"}))
    return run


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_folder_is_scored_like_the_run_scored_it(tmp_path, tokenizer, capsys):
    model = tiny_model(tokenizer)
    prompts = write_jsonl(tmp_path / "p.jsonl", [json.loads(line) for line in open(demo_eval_file()).readlines()[:3]])
    evals = {"heldout": {"path": "heldout", "max_new_tokens": 5}, "file": {"path": prompts, "max_new_tokens": 5}}
    run = _run_folder(tmp_path, model, tokenizer, evals)
    heldout = [{"prompt": [{"role": "user", "content": "Reverse 123"}], "reference": "321"}]
    in_memory = TaskEvaluation(evals, output_dir=str(run / "evals"))
    in_memory.use_heldout(heldout)  # the run saves its held-out rows to evals/heldout_examples.jsonl
    expected = in_memory.evaluate(model, tokenizer, step=12)

    assert main([str(run), "evals.file.max_new_tokens=5"]) == 0
    printed = capsys.readouterr().out
    assert "eval_heldout/exact_match: 0.0000" in printed and "eval_file/truncated" in printed
    assert json.loads((run / "evaluate" / "scores.json").read_text()) == expected
    for task in ("heldout", "file"):
        assert _read(run / "evaluate" / task / "step-12.jsonl") == _read(run / "evals" / task / "step-12.jsonl")


def test_a_lora_adapter_loads_on_the_runs_base_model(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(tokenizer)
    base.save_pretrained(str(tmp_path / "run" / "base_model"))
    base.name_or_path = "/nowhere/moved"  # recorded in adapter_config; the base is found beside the adapter instead
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "abc", "completion": "x"}, {"prompt": "hello", "completion": "y"}]
    )
    evals = {"t": {"path": prompts, "max_new_tokens": 6}}
    run = _run_folder(tmp_path, peft_model, tokenizer, evals)
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "/nowhere/moved"
    expected = TaskEvaluation(evals, output_dir=str(tmp_path / "mem")).evaluate(peft_model, tokenizer, step=12)
    assert main([str(run / "model"), "--out", str(tmp_path / "cli")]) == 0  # the model folder of a run
    assert _read(tmp_path / "cli" / "t" / "step-12.jsonl") == _read(tmp_path / "mem" / "t" / "step-12.jsonl")
    assert json.loads((tmp_path / "cli" / "scores.json").read_text()) == expected


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "no such file or folder"),
    (["{run}", "trainer.max_steps=3"], "only task overrides"),
    (["{run}", "evals=gsm8k"], "evals.gsm8k.path is required"),
    (["{model}"], "a model folder has no tasks of its own"),
])  # fmt: skip
def test_bad_command_lines_are_one_clear_error(tmp_path, tokenizer, capsys, args, message):
    run = _run_folder(tmp_path, tiny_model(tokenizer), tokenizer, {})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    args = [a.format(tmp=tmp_path, run=run, model=tmp_path / "model") for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_an_evaluator_of_your_own_is_not_a_task_to_score_here(caplog):
    """An entry of `evals` with a `_target_` is the run's own evaluator: evaluate runs the tasks alone."""
    from sft_exp.tools.evaluate import task_config

    with caplog.at_level("INFO", logger="sft_exp.tools.evaluate"):
        tasks = task_config(None, ["evals=heldout", "+evals.mine._target_=my_package.MyEvaluator"])
    assert list(tasks) == ["heldout"]
    assert "evals.mine" in caplog.text
