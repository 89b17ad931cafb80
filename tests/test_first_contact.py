"""A user's first mistakes and own files (issue-style first contact): one message naming the key or
folder and the fix, exit code 2, and nothing of the demo's settings in a run on the user's data."""

from __future__ import annotations

import json

import pytest

from sft_exp.errors import ConfigError
from tests.helpers import compose, run_sft


def test_a_misspelled_key_is_one_did_you_mean_with_exit_2():
    # Hydra's own advice for this is `+trainer.max_stepz=3`; that must not move the failure to instantiate.
    for override in ("trainer.max_stepz=3", "+trainer.max_stepz=3"):
        done = run_sft(override, "logger=none", "evals=none", timeout=120)
        output = done.stdout + done.stderr  # Hydra's logging goes to stdout
        assert done.returncode == 2, output[-2000:]
        assert "trainer.max_stepz: unknown key; did you mean `max_steps`?" in output
        assert "Traceback" not in output and "use +trainer.max_stepz" not in output


def test_a_misspelled_source_key_names_the_source_field():
    from sft_exp.cli_errors import composed

    with pytest.raises(ConfigError, match=r"data.sources\[\]\.max_sample: unknown key; did you mean `max_samples`"):
        composed(["data.sources=[{path:x.jsonl,max_sample:3}]"])


def test_a_new_key_in_a_dict_of_any_keys_is_told_to_take_a_plus():
    from sft_exp.cli_errors import composed

    with pytest.raises(ConfigError, match=r"trainer.extra_args takes any key, .* \+trainer.extra_args.seed=1$"):
        composed(["trainer.extra_args.seed=1"])
    assert composed(["+trainer.extra_args.seed=1"]).trainer.extra_args.seed == 1


EARLY_STOP = [
    "+callbacks.early_stop._target_=transformers.EarlyStoppingCallback",
    "+callbacks.early_stop.early_stopping_patience=1",
    "+callbacks.early_stop.early_stopping_threshold=0.5",
]


def test_early_stopping_names_the_keys_it_needs_then_stops_the_run(tmp_path):
    from sft_exp.preflight import validate_config

    with pytest.raises(ConfigError, match=r"set trainer.eval_steps=.* and \+trainer.extra_args.metric_for_best_model"):
        validate_config(compose(EARLY_STOP))
    # Evaluated every 20 steps, stopped at the first evaluation whose eval_loss is not 0.5 below the best.
    done = run_sft(
        *EARLY_STOP,
        "trainer.eval_steps=20",
        "+trainer.extra_args.metric_for_best_model=eval_loss",
        "trainer.max_steps=200",
        "logger=none",
        "evals=none",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    steps = json.loads((tmp_path / "summary.json").read_text())["global_step"]
    assert 20 <= steps < 200 and steps % 20 == 0, steps


def test_a_plus_key_on_a_component_is_refused_before_anything_loads():
    from sft_exp.preflight import validate_config

    with pytest.raises(ConfigError, match="did you mean `max_length`"):
        validate_config(compose(["+data.max_lenght=64"]))


def test_a_model_folder_without_a_model_is_one_error_before_tokenizing(tmp_path):
    from sft_exp.preflight import validate_config

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no model .no config.json"):
        validate_config(compose(["model=hf", f"model.name_or_path={empty}"]))
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="has a config.json but no weights"):
        validate_config(compose(["model=hf", f"model.name_or_path={empty}"]))


def test_max_length_unset_is_the_default_or_the_model_context_and_says_which(tmp_path):
    from hydra.utils import instantiate

    from sft_exp.data.settings import DEFAULT_MAX_LENGTH, resolve_max_length

    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    # Replacing the demo's sources keeps nothing of the demo's: max_length is unset, not 256.
    settings = instantiate(compose([f"data.sources=[{{path:{tmp_path / 'x.jsonl'}}}]"]).data)
    assert settings.max_length is None
    assert resolve_max_length(settings, None)[0].max_length == DEFAULT_MAX_LENGTH
    assert resolve_max_length(settings, 4096)[1] == "the default"
    small, origin = resolve_max_length(settings, 512)
    assert (small.max_length, origin) == (512, "the model's context")
    chosen = instantiate(compose([f"data.sources=[{{path:{tmp_path / 'x.jsonl'}}}]", "data.max_length=300"]).data)
    assert resolve_max_length(chosen, 128) == (chosen, "data.max_length")


def test_off_the_demo_the_default_evaluation_is_eval_loss_and_accuracy(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from sft_exp.train import default_evals_off_demo

    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    for overrides, tasks in (
        ([], ["heldout"]),  # the demo keeps its task
        ([f"data.sources=[{{path:{path}}}]"], []),  # the user's data: no default task
        ([f"data.sources=[{{path:{path}}}]", "evals=heldout"], ["heldout"]),  # asked for
    ):
        cfg = compose(overrides)
        default_evals_off_demo(cfg, instantiate(cfg.data))
        assert list(cfg.evals or {}) == tasks, overrides
    cfg = compose([f"data.sources=[{{path:{path}}}]"])  # an experiment file's own evaluator, beside the default
    with open_dict(cfg):
        cfg.evals.mine = {"_target_": "my_package.MyEvaluator"}
    default_evals_off_demo(cfg, instantiate(cfg.data))
    assert list(cfg.evals) == ["mine"]  # the demo's heldout task goes; the evaluator stays


def test_threads_follow_the_request_the_environment_or_the_free_cpus(monkeypatch):
    from sft_exp import system

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert system.choose_threads(3) == (3, "trainer.threads")
    count, why = system.choose_threads(None)
    assert 1 <= count <= system.usable_cpus() and "busy with other processes" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert system.choose_threads(None) == (1, "OMP_NUM_THREADS")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    import os

    for busy, policy in ((1, "PASSIVE"), (0, None)):  # sleep on a shared machine; spin a while on an idle one
        monkeypatch.setenv("OMP_WAIT_POLICY", "unset")
        monkeypatch.delenv("OMP_WAIT_POLICY")  # restored (removed) after the test, as prepare sets it
        monkeypatch.setattr(system, "busy_cpus", lambda busy=busy: busy)
        system.prepare(None)
        assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_counts_print_as_counts_and_the_resume_hint_is_a_command(monkeypatch, tmp_path):
    from sft_exp.errors import TrainingInterrupted
    from sft_exp.run.hydra_job import resume_command
    from sft_exp.run.recorder import format_score

    assert format_score("eval_heldout/truncated", 22.0) == "22"
    assert format_score("eval_heldout/exact_match", 1.0) == "1.0000"
    monkeypatch.setattr("sys.argv", ["sft_exp", "trainer.max_steps=3", "hydra.run.dir=/elsewhere"])
    hint = str(TrainingInterrupted(2, 5, tmp_path, command=resume_command(tmp_path)))
    assert hint.endswith(
        f"Resume with: python -m sft_exp trainer.max_steps=3 hydra.run.dir={tmp_path} resume_from_checkpoint=true"
    )


def test_a_misspelled_task_key_is_did_you_mean_and_a_new_one_takes_a_plus():
    from sft_exp.cli_errors import composed

    with pytest.raises(ConfigError, match=r"^evals.heldout.limt: unknown key; did you mean `limit`\?") as error:
        composed(["evals.heldout.limt=8"])
    assert "+" not in str(error.value)  # a `+` would only move the failure to when the task is built
    with pytest.raises(ConfigError, match=r"add it with a `\+` in front: \+evals.heldout.temperature=0.7$"):
        composed(["evals.heldout.temperature=0.7"])


def test_an_unquoted_source_mapping_split_by_the_shell_is_told_to_quote_it():
    # bash turns data.sources=[{path:a.jsonl,name:mine}] into two arguments (brace expansion), as here.
    done = run_sft("data.sources=[path:a.jsonl]", "data.sources=[name:mine]", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "quote the whole override: 'data.sources=[{path:a.jsonl,name:mine}]'" in output


def test_a_columns_mapping_names_the_users_column_and_its_direction(tmp_path):
    from sft_exp.data.formats import detect_format
    from sft_exp.data.settings import DataSettings
    from sft_exp.errors import DataError

    columns = ["question", "answer"]
    with pytest.raises(DataError, match=r"columns.prompt=query: the file has no column 'query'; its columns"):
        detect_format("prompt_completion", columns, {"prompt": "query", "completion": "answer"}, "qa.jsonl")
    with pytest.raises(
        DataError,
        match=r"reads its `prompt` field from a column named 'prompt', which the file does "
        r"not have .* name the column of yours that holds it: columns=\{prompt: <one",
    ):
        detect_format("prompt_completion", columns, {}, "qa.jsonl")
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=r"columns.question: .* so this is columns.prompt=question"):
        DataSettings(sources=[{"path": str(data), "columns": {"question": "prompt"}}], seed=0)


def test_the_defaults_a_users_data_trains_with_come_first_with_their_keys(tmp_path, caplog):
    import logging

    from sft_exp.train import run
    from sft_exp.training.relaunch import RunFolderTaken

    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 20)
    taken = tmp_path / "run"  # a folder holding a run: this launch stops there, before torch loads
    taken.mkdir()
    (taken / "resolved_config.yaml").write_text("seed: 1\n")
    (taken / "summary.json").write_text('{"status": "completed"}\n')
    with caplog.at_level(logging.INFO), pytest.raises(RunFolderTaken):
        run(compose([f"data.sources=[{{path:{data}}}]", f"run_dir={taken}", "resume_from_checkpoint=false"]))
    first = caplog.records[0].getMessage()
    assert first.startswith(
        "your data trains with: loss on assistant replies only of conversations "
        "(data.assistant_only_loss=true; TRL: false, every token)"
    )
    assert "5% of each source's rows held out and evaluated before and after training (data.eval_split_size=0" in first
    assert "1500 steps (trainer.max_steps)" in first  # the tiny demo's recipe; on model=hf: 1 epoch (TRL: 3)
