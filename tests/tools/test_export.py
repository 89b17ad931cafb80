"""`python -m sft_exp.export`: the serving check, the model card, and --push-to-hub up to the upload."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from huggingface_hub import ModelCard

from tests.helpers import compose, run_sft

# A few steps of the default run (tiny model, demo data) with its held-out task on 8 prompts.
RUN = [
    "optimizer.lr=1e-3",
    "trainer.max_steps=4",
    "trainer.logging_steps=2",
    "trainer.save_steps=4",
    "trainer.per_device_train_batch_size=4",
    "data.sources.0.max_samples=48",
    "data.sources.0.eval_max_samples=8",
    "data.max_length=64",
    "evals.heldout.limit=8",
    "evals.heldout.max_new_tokens=6",
    "logger=none",
]


def train(run_dir, *overrides):
    from sft_exp.train import run

    run(compose([*RUN, f"run_dir={run_dir}", *overrides]))
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("export") / "lora", "peft=lora")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("export") / "full")


def copy_run(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("merged", "export_check"))
    return target


def test_merge_passes_the_serving_check_and_writes_a_model_card(lora_run, capsys):
    from sft_exp.tools.export import main

    assert main([str(lora_run), "--merge"]) == 0
    table = capsys.readouterr().out
    for row in (
        "<|im_end|> trained",
        "<|im_end|> stops generation",
        "eval_heldout/exact_match",
        "eval_heldout/truncated",
        "eval_heldout/output_tokens",
        "eval_heldout outputs",
    ):
        assert row in table
    assert "FAIL" not in table and "8 of 8 identical" in table
    info = json.loads((lora_run / "run_info.json").read_text())
    summary = json.loads((lora_run / "summary.json").read_text())
    card = ModelCard.load(lora_run / "merged" / "README.md")
    assert {"sft_exp", "lora"} <= set(card.data.tags) and card.data.library_name == "transformers"
    text = card.text
    assert info["data_fingerprint"] in text and "| demo | train |" in text and "| 48 | 48 | 0 |" in text
    before, after = summary["eval_heldout/truncated_before"], summary["eval_heldout/truncated"]
    held_out = info["evaluations"]["eval set"]["source"]  # every score with its n and source
    assert f"| eval_heldout/truncated | 8 prompts | `held-out rows ({held_out})` | {before:.4g} | {after:.4g} |" in text
    assert f"| eval_loss | 8 rows | `{held_out}` |" in text
    found = info["data_stats"]["contamination"]
    assert f"{found['rows']} of 48 match (mode `report`)" in text and "| held-out rows |" in text
    assert f"transformers: {info['versions']['transformers']}" in text and "peft.r" not in text  # yaml, not dotted
    assert "```yaml" in text and "_target_: peft.LoraConfig" in text
    assert "Generation stops at token ids [2]" in text


def test_a_logged_score_the_export_does_not_reproduce_fails_naming_it(lora_run, tmp_path, caplog):
    from sft_exp.tools.export import main

    run = copy_run(lora_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["eval_heldout/output_tokens"] += 1.5  # what a non-identical export would show
    (run / "summary.json").write_text(json.dumps(summary))
    with caplog.at_level(logging.ERROR, logger="sft_exp.tools.export"):
        assert main([str(run), "--merge"]) == 1
    assert "does not serve as it was trained" in caplog.text and "eval_heldout/output_tokens" in caplog.text
    assert "eval_heldout/exact_match" not in caplog.text  # only what differs is named


def test_a_different_generation_fails_naming_the_outputs(lora_run, tmp_path, caplog):
    from sft_exp.tools.export import main

    run = copy_run(lora_run, tmp_path)
    step = json.loads((run / "summary.json").read_text())["global_step"]
    logged = run / "evals" / "heldout" / f"step-{step}.jsonl"
    rows = [json.loads(line) for line in logged.read_text().splitlines()]
    rows[3]["output"] += "x"
    logged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.ERROR, logger="sft_exp.tools.export"):
        assert main([str(run), "--merge"]) == 1
    assert "eval_heldout outputs: expected 8 identical to the run's, got 7 of 8 identical" in caplog.text


def test_a_generation_config_without_the_end_of_turn_fails_the_check(lora_run, tmp_path):
    from sft_exp.tools import serving_check
    from sft_exp.tools.export import merge

    run = copy_run(lora_run, tmp_path)
    folder = merge(run, tmp_path / "merged")
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = 0  # <|endoftext|> only: the bug this check exists for
    (folder / "generation_config.json").write_text(json.dumps(config))
    checks = {c.name: c for c in serving_check.check_folder(run, folder, tmp_path / "scratch")}
    assert not checks["<|im_end|> stops generation"].ok and checks["<|im_end|> trained"].ok
    assert "<|im_end|> stops generation: expected id 2" in serving_check.failures(list(checks.values()))


def test_a_full_fine_tune_is_checked_in_place_and_its_model_has_a_card(full_run, capsys):
    from sft_exp.tools.export import main

    card = ModelCard.load(full_run / "model" / "README.md")  # written by the run itself
    assert "full fine-tune" in card.text and "End of turn: `<|im_end|>` (id 2)" in card.text
    assert main([str(full_run)]) == 0 and "FAIL" not in capsys.readouterr().out
    assert main([str(full_run), "--merge"]) == 2  # nothing to merge


def test_push_to_hub_refuses_a_bad_repo_id_before_any_work(lora_run, tmp_path):
    run = copy_run(lora_run, tmp_path)
    proc = run_sft(str(run), "--merge", "--push-to-hub", "not a repo//id", module="sft_exp.export", timeout=120)
    assert proc.returncode == 2 and "--push-to-hub 'not a repo//id'" in proc.stderr
    assert not (run / "merged").exists()


@pytest.mark.slow  # an export and its check, then an upload that cannot reach the Hub here
def test_push_to_hub_exports_and_checks_then_names_the_failed_upload(lora_run, tmp_path):
    """The Hub is unreachable here (HF_HUB_OFFLINE=1): everything up to the upload runs, then a clear exit 1."""
    run = copy_run(lora_run, tmp_path)
    proc = run_sft(str(run), "--merge", "--push-to-hub", "me/tiny-sft", module="sft_exp.export", timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "uploading" in proc.stderr and "me/tiny-sft" in proc.stderr and "huggingface-cli upload" in proc.stderr
    assert "stops generation" in proc.stdout and "FAIL" not in proc.stdout  # checked before the upload
    assert {"README.md", "generation_config.json", "config.json", "model.safetensors"} <= {
        p.name for p in (run / "merged").iterdir()
    }
