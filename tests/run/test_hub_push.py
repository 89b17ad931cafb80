"""Hub pushes during training (callbacks.push_to_hub), up to the upload, which cannot reach a Hub here: the
settings are checked before anything loads, and a failed push is named, recorded and never loses the run."""

from __future__ import annotations

import json

import pytest

from sft_exp.errors import ConfigError
from tests.helpers import TEST_ENV, compose, run_sft, tiny_run

PUSH = ["callbacks=[default,push_to_hub]", "callbacks.push_to_hub.repo_id=me/tiny-sft"]


def test_every_push_that_fails_is_named_and_the_run_keeps_its_files(tmp_path, monkeypatch):
    # A Hub that refuses every connection (a closed local port): as unreachable as the Hub is offline, and the
    # same on a machine that could reach huggingface.co. A token so the callback gets as far as the upload.
    monkeypatch.setitem(TEST_ENV, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(TEST_ENV, "HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delitem(TEST_ENV, "HF_HUB_OFFLINE")
    done = run_sft(
        *PUSH,
        "callbacks.push_to_hub.strategy=checkpoint",
        *tiny_run(4, 24, 2),
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]  # a failed push does not stop the run
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    assert f"push of {checkpoint} to the Hub repository me/tiny-sft failed (ConnectError" in output
    assert f"`hf upload me/tiny-sft {checkpoint} last-checkpoint`" in output  # what pushes it later
    assert f"`hf upload me/tiny-sft {tmp_path / 'model'}`" in output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["hub_push"]["pushed"] == []
    assert set(summary["hub_push"]["failed"]) == {
        str(checkpoint),
        str(tmp_path / "checkpoints" / "checkpoint-4"),
        str(tmp_path / "model"),
    }
    assert (checkpoint / "optimizer.pt").is_file() and (tmp_path / "model" / "model.safetensors").is_file()


def test_the_push_settings_are_checked_before_anything_loads(monkeypatch):
    from sft_exp.preflight import validate_config
    from sft_exp.run.hub_push import PushToHub

    with pytest.raises(ConfigError, match=r"required config value\(s\) not set: callbacks.push_to_hub.repo_id"):
        validate_config(compose(PUSH[:1]))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="strategy='sometimes' is not one of every_save, checkpoint"):
        PushToHub("me/model", strategy="sometimes")
    with pytest.raises(ConfigError, match="not a Hub repository id"):
        PushToHub("me/my model")
    assert PushToHub("me/model", strategy="all_checkpoints").repo_id == "me/model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set, so nothing could be pushed"):
        PushToHub("me/model")


def test_without_a_login_the_push_is_refused_before_training(monkeypatch, tmp_path):
    from sft_exp.run.hub_push import PushToHub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(ConfigError, match="not logged in to the Hugging Face Hub; run `hf auth login`"):
        PushToHub("me/model")
