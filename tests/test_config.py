"""Every group option composes and builds what it targets; user mistakes fail fast and clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from sft_exp.paths import config_dir
from tests.helpers import REPO, TEST_ENV, compose, run_sft

GROUPS = ("model", "data", "optimizer", "loss", "memory", "peft", "distributed", "logger", "trainer", "experiment")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = group_options(group)
    assert options, f"conf/{group}/ has no options"
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert not OmegaConf.missing_keys(cfg), (group, option, OmegaConf.missing_keys(cfg))


@pytest.mark.parametrize("group", ["optimizer", "loss", "memory", "peft", "logger"])
def test_every_option_instantiates_its_target(group):
    import torch

    for option in group_options(group):
        node = compose([f"{group}={option}"])[group]
        if node is None:  # peft=none, logger=none
            continue
        if group == "peft" and "qlora" in option:
            continue  # needs CUDA + bitsandbytes; its own tests cover the refusal
        built = instantiate(node, _convert_="all")
        if group == "optimizer":  # a partial: the trainer passes the parameters
            built = built([torch.nn.Parameter(torch.zeros(2))])
            assert isinstance(built, torch.optim.Optimizer)
        assert built is not None


def test_trainer_target_is_the_sft_trainer():
    from sft_exp.training.trainer import SFTTrainer

    assert get_class(compose()["trainer"]["_target_"]) is SFTTrainer


def test_required_keys_exist_with_their_documented_names():
    cfg = compose()
    for key in (
        "seed",
        "model.name_or_path",
        "data.max_length",
        "trainer.max_steps",
        "trainer.num_train_epochs",
        "trainer.per_device_train_batch_size",
        "trainer.gradient_accumulation_steps",
        "trainer.logging_steps",
        "trainer.eval_steps",
        "trainer.save_steps",
        "optimizer.lr",
    ):
        OmegaConf.select(cfg, key, throw_on_missing=False)  # raises if the key path does not exist
        parent, _, leaf = key.rpartition(".")
        assert leaf in (OmegaConf.select(cfg, parent) if parent else cfg), key


@pytest.mark.parametrize(
    "override, error",
    [
        (["model=nope"], MissingConfigException),  # unknown group option
        (["data.max_lenght=3"], ConfigCompositionException),  # misspelled key
        (["optimizer.lr=fast"], ConfigCompositionException),  # wrong type
        (["trainer.max_steps=1.5"], ConfigCompositionException),
        (["loss.chunk_size=x"], ConfigCompositionException),
    ],
)
def test_bad_overrides_fail_at_compose_time(override, error):
    with pytest.raises(error):
        compose(override)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["trainer.max_stepz=3"], "trainer.max_stepz"),
        (["optimizer.lr=fast"], "optimizer.lr"),
        (["model=hf", "model.name_or_path=/no/such/model"], "model.name_or_path=/no/such/model: no such folder"),
        (["model.name_or_path=/no/such/model"], "use `python -m sft_exp model=hf model.name_or_path=/no/such/model"),
        (["data.sources=[{path:/no/such/file.jsonl}]"], "/no/such/file.jsonl"),
        (["data.sources=[{name:x}]"], "data.sources"),  # path is required (???)
        (["model=qwen2_5_0_5b"], "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"),  # a hub id
    ],
)
def test_bad_input_exits_nonzero_with_one_clear_message_before_loading(args, expected, tmp_path):
    started = time.monotonic()
    proc = run_sft(*args, f"hydra.run.dir={tmp_path}/run", "logger=none", timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output  # every user error, Hydra's or ours: exit code 2
    assert expected in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "run" / "model").exists()
    assert time.monotonic() - started < 60  # fails before any model or data loads


def test_a_hub_model_the_hub_cannot_serve_fails_in_one_line_before_any_data(tmp_path):
    # The Hub at a closed port: what a machine without internet sees (connection refused, no retries).
    env = {**TEST_ENV, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "sft_exp", "model=qwen2_5_0_5b", f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert (
        "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct: it is not in the local cache and the Hugging Face Hub "
        "cannot be reached"
        in output
        and "hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir DIR" in output
    ), output
    assert "Tokenizing" not in output  # before the data


def test_help_and_cfg_job_work():
    help_text = run_sft("--help")
    assert help_text.returncode == 0
    assert "logger: mlflow, none, tensorboard, wandb" in help_text.stdout and "schema" not in help_text.stdout
    proc = run_sft("--cfg", "job", "loss=dft", "memory=offload")
    assert proc.returncode == 0, proc.stderr
    job = OmegaConf.create(proc.stdout)
    assert job.loss._target_ == "sft_exp.training.losses.DFTLoss"
    assert job.memory._target_ == "sft_exp.training.memory.ActivationOffloading"
