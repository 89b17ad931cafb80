"""The default run end to end in a subprocess, and the run folder it leaves behind."""
from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SHORT_RUN, run_sft


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default") / "run"
    proc = run_sft(*SHORT_RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc


def test_run_folder_has_everything_a_run_leaves(default_run):
    run_dir, _ = default_run
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "resolved_config.yaml",
                 "run_info.json", "metrics.jsonl", "summary.json", "samples.jsonl", "model/config.json"):
        assert (run_dir / name).exists(), name
    resolved = (run_dir / "resolved_config.yaml").read_text()
    assert "${" not in resolved  # every interpolation resolved
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 42 and info["data_fingerprint"] and info["versions"]["torch"]
    assert "git" in info and "dirty" in info["git"]


def test_metrics_jsonl_rows_per_logging_step(default_run):
    run_dir, _ = default_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4]  # logging_first_step, then every 2 steps
    for row in train:
        for key in ("loss", "mean_token_accuracy", "entropy", "num_tokens", "learning_rate", "grad_norm"):
            assert key in row, (key, row)
        assert 0.0 <= row["mean_token_accuracy"] <= 1.0 and row["entropy"] > 0
    tokens = [r["num_tokens"] for r in train]
    assert tokens == sorted(tokens) and tokens[0] > 0  # cumulative
    assert any("eval_loss" in r and "eval_mean_token_accuracy" in r for r in rows)


def test_summary_and_final_model_load(default_run):
    run_dir, proc = default_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("eval_mean_token_accuracy_before", "eval_mean_token_accuracy", "train_tokens_per_s",
                "wall_time_s", "cpu_peak_rss_mb", "global_step"):
        assert key in summary, key
    assert summary["global_step"] == 4
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.vocab_size >= len(tokenizer)
    assert "step 4/4" in proc.stdout + proc.stderr  # the progress line a person follows


def test_dft_with_offload_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_sft(*SHORT_RUN, "loss=dft", "memory=offload", "trainer.num_sample_generations=0",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert all(isinstance(r.get("loss", 0.0), float) for r in rows)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
