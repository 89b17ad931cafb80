"""`python -m sft_exp.reproduce <run> --verify`: the saved config re-run gives identical metrics and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_exp.tools.reproduce import compare_metrics, main, verify
from tests.helpers import compose, tiny_run

TINY = tiny_run(steps=3, train_rows=24, save_steps=3)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    from sft_exp.train import run

    run_dir = tmp_path_factory.mktemp("original")
    run(compose([*TINY, f"run_dir={run_dir}"]))
    return run_dir


def test_reproduce_verify_finds_identical_metrics_and_weights(original, tmp_path, capfd):
    new_run = tmp_path / "again"
    assert main([str(original), "--verify", f"hydra.run.dir={new_run}"]) == 0
    out = capfd.readouterr().out
    assert "metrics.jsonl: identical" in out and "final weights: byte-identical" in out
    assert (new_run / ".hydra" / "config.yaml").is_file()  # a run folder like any other
    assert json.loads((new_run / "summary.json").read_text())["status"] == "completed"


def test_verify_reports_a_changed_metric(original):
    rows = [json.loads(line) for line in (original / "metrics.jsonl").read_text().splitlines()]
    changed = [dict(row) for row in rows]
    changed[2]["loss"] = changed[2]["loss"] + 1e-7
    changed[-1]["eval_runtime"] = 123.0  # wall clock: never a difference
    problems = compare_metrics(rows, changed)
    assert len(problems) == 1 and "loss" in problems[0] and f"step {rows[2]['step']}" in problems[0]
    assert compare_metrics(rows, rows[:-1]) == [f"{len(rows)} rows before, {len(rows) - 1} now"]


def test_reproducing_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "resolved_config.yaml").write_text("seed: 1\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and f"give one of its jobs, e.g. {tmp_path / '0'}" in err


def test_a_group_choice_override_is_refused_with_what_to_do(original, capsys):
    assert main([str(original), "loss=dft"]) == 2
    assert "not group choices" in capsys.readouterr().err


def test_run_info_differences_name_the_changed_data_and_versions(original, tmp_path):
    from sft_exp.tools.reproduce import compare_run_info

    info = json.loads((original / "run_info.json").read_text())
    assert info["data_fingerprint"]  # every run records what data it trained on
    changed = {**info, "data_fingerprint": "0" * 16, "versions": {**info["versions"], "torch": "0.0"}}
    (tmp_path / "run_info.json").write_text(json.dumps(changed))
    notes = compare_run_info(original, tmp_path)
    assert any(n.startswith("data_fingerprint:") and "training data changed" in n for n in notes)
    assert any(n.startswith("torch:") for n in notes) and len(notes) == 2


def _copy_run(original: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(original, to, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    return to


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
def test_verify_exits_1_when_the_old_metrics_differ(original, tmp_path, capfd):
    old = _copy_run(original, tmp_path / "old")
    rows = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()]
    edited = next(i for i, row in enumerate(rows) if "loss" in row)
    rows[edited]["loss"] += 0.5
    (old / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main([str(old), "--verify", f"hydra.run.dir={tmp_path / 'again'}"]) == 1
    out = capfd.readouterr().out
    assert "metrics.jsonl differs" in out and f"row {edited + 1}" in out and "loss" in out
    assert "final weights: byte-identical" in out  # only the metrics were edited


def test_verify_reports_changed_weights(original, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    new = _copy_run(original, tmp_path / "new")
    weights_file = new / "model" / "model.safetensors"
    weights = load_file(weights_file)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-6
    save_file(weights, weights_file, metadata={"format": "pt"})
    assert verify(original, new) is False
    out = capsys.readouterr().out
    assert "metrics.jsonl: identical" in out and "final weights in model/ differ: model.safetensors" in out


@pytest.mark.parametrize("side", ["old", "new"])
def test_verify_reports_a_missing_model_folder_as_a_difference(original, tmp_path, capsys, side):
    import shutil

    copy = _copy_run(original, tmp_path / "copy")
    shutil.rmtree(copy / "model")
    old, new = (copy, original) if side == "old" else (original, copy)
    assert verify(old, new) is False
    out = capsys.readouterr().out
    assert f"no *.safetensors in {copy}/model" in out and "byte-identical" not in out


@pytest.mark.parametrize(
    "evaluators, evals",
    [
        (
            {
                "task_evaluation": {
                    "_target_": "sft_exp.evaluation.TaskEvaluation",
                    "tasks": {"heldout": {"path": "heldout"}},
                },
                "mine": {"_target_": "my_package.Mine", "k": 1},
            },
            {"heldout": {"path": "heldout"}, "mine": {"_target_": "my_package.Mine", "k": 1}},
        ),
        ({}, {}),  # evaluators=none: the tasks of `evals` were not scored
    ],
)
def test_a_run_saved_with_the_evaluators_group_reproduces_with_the_same_evals(tmp_path, evaluators, evals):
    from omegaconf import OmegaConf

    from sft_exp.tools.reproduce import load_run_config

    OmegaConf.save(
        OmegaConf.create(
            {"seed": 1, "evaluators": evaluators, "evals": {"heldout": {"path": "heldout"}}, "run_dir": str(tmp_path)}
        ),
        tmp_path / "resolved_config.yaml",
    )
    config = load_run_config(tmp_path)
    assert "evaluators" not in config and config["evals"] == evals
