"""The default run end to end in a subprocess, and the run folder it leaves behind."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import DEMO_EVAL_ROWS, NO_SAMPLE_GENERATIONS, SAMPLE_GENERATIONS, SHORT_RUN, run_sft


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
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        ".hydra/hydra.yaml",
        "resolved_config.yaml",
        "run_info.json",
        "metrics.jsonl",
        "summary.json",
        "model/config.json",
        "evals/heldout/step-0.jsonl",  # task evaluation before and after
        "evals/heldout/step-4.jsonl",
    ):
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
    for key in (
        "eval_mean_token_accuracy_before",
        "eval_mean_token_accuracy",
        "train_tokens_per_s",
        "wall_time_s",
        "cpu_peak_rss_mb",
        "global_step",
    ):
        assert key in summary, key
    assert summary["global_step"] == 4
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.vocab_size >= len(tokenizer)
    assert "step 4/4" in proc.stdout + proc.stderr  # the progress line a person follows


def test_dft_with_memory_offload_on_cpu_warns_falls_back_to_checkpointing_and_learns(tmp_path):
    """Without CUDA offloading saves nothing (it says so) and its checkpointing still runs: DFT must still learn."""
    run_dir = tmp_path / "run"
    overrides = [o for o in SHORT_RUN if o not in SAMPLE_GENERATIONS]
    proc = run_sft(
        *overrides,
        "loss=dft",
        "memory=offload",
        "trainer.logging_steps=1",
        "trainer.max_steps=6",
        "data.sources.0.max_samples=64",
        DEMO_EVAL_ROWS.format(8),
        "data.max_length=64",
        *NO_SAMPLE_GENERATIONS,
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "saves nothing here" in proc.stdout + proc.stderr
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) and math.isfinite(r["nll"]) for r in rows), rows
    # DFT's loss (-p log p per token) rises while p is small; the NLL is what falls when the model learns.
    nll = [r["nll"] for r in rows]
    assert nll[-1] < nll[0] and sum(nll[3:]) < sum(nll[:3]), nll
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
