"""Several processes, one run: DDP equals one big batch; FSDP/DeepSpeed presets refused where they cannot run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sft_exp.distributed import training_arguments
from sft_exp.errors import ConfigError
from sft_exp.validation import validate_config
from tests.conftest import REPO, TEST_ENV, compose

# Four logged steps over a small slice of the demo data, no eval: what DDP changes is all here.
SHORT = ["trainer.max_steps=4", "trainer.logging_steps=1", "trainer.save_steps=4", "trainer.num_sample_generations=0",
         "logger=none", "data.eval_sources=[]", "data.sources.0.max_samples=64"]


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}, rows


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**TEST_ENV, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sft_exp", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    from sft_exp.train import run

    single = tmp_path / "single"
    run(compose([*SHORT, "trainer.per_device_train_batch_size=8", f"run_dir={single}"]))  # in-process: faster
    # Each rank resolves its own folder here; rank 0's must win and rank 1's must be gone.
    proc = _torchrun(*SHORT, "trainer.per_device_train_batch_size=4", f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = tmp_path / "rank0"
    assert not (tmp_path / "rank1").exists()

    expected, _ = _losses(single)
    got, rows = _losses(shared)
    assert sorted(got) == [1, 2, 3, 4]
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)  # rank 0 alone writes: no row twice
    assert max(abs(got[s] - expected[s]) for s in expected) < 1e-5, (got, expected)
    assert rows[0]["epoch"] == pytest.approx(8 / 64)  # the two ranks split one batch of 8, not two of 4
    log_lines = (shared / "__main__.log").read_text().splitlines()
    assert len(log_lines) == len(set(log_lines))  # no line written twice (rank 1 logs to its console only)
    assert (shared / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_job(tmp_path):
    # `--multi_gpu` is accelerate's torchrun launcher; on a CPU-only machine sft_exp picks gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sft_exp",
           *SHORT, "trainer.per_device_train_batch_size=4", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env={**TEST_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, rows = _losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4] and rows[0]["epoch"] == pytest.approx(8 / 64)


def test_deepspeed_is_refused_when_it_cannot_run():
    try:
        import deepspeed  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("deepspeed and CUDA are here: the preset can run")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="distributed=deepspeed"):
        validate_config(compose(["distributed=deepspeed"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on CUDA")
def test_fsdp_without_cuda_is_refused_with_the_alternative():
    with pytest.raises(ConfigError, match="distributed=ddp"):
        validate_config(compose(["distributed=fsdp"]))


def test_unknown_strategy_is_refused():
    with pytest.raises(ConfigError, match="distributed.strategy"):
        validate_config(compose(["distributed.strategy=zero5"]))


def test_presets_hand_transformers_its_own_arguments():
    from transformers import TrainingArguments

    fsdp = training_arguments(compose(["distributed=fsdp"]).distributed)
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    ds = training_arguments(compose(["distributed=deepspeed"]).distributed)
    assert ds["deepspeed"]["zero_optimization"]["stage"] == 3
    fields = TrainingArguments.__dataclass_fields__
    assert {"fsdp", "fsdp_config", "deepspeed", "ddp_find_unused_parameters"} <= set(fields)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp2_runs_on_two_gpus(tmp_path):
    proc = _torchrun(*SHORT, "distributed=fsdp", "trainer.per_device_train_batch_size=4", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, _ = _losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4]


def test_submitit_tasks_become_ranks(monkeypatch):
    pytest.importorskip("submitit")
    from sft_exp.distributed import export_slurm_environment

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")  # recorded, so the teardown removes what export sets
        monkeypatch.delenv(key)
    # What SLURM and submitit set for task 1 of a 2-task job on one node.
    for key, value in dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="1234", SLURM_NTASKS="2", SLURM_PROCID="1",
                           SLURM_LOCALID="1", SLURM_JOB_NODELIST="node7", SLURM_JOB_NUM_NODES="1",
                           SLURM_NNODES="1", SLURM_NODEID="0").items():
        monkeypatch.setenv(key, value)
    export_slurm_environment()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] == "node7"


def test_slurm_launcher_example_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sft_exp.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", return_hydra_config=True,
                            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                       "hydra.launcher.tasks_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
