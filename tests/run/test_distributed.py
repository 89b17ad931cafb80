"""Several processes, one run: DDP (with evaluation before training) equals one big batch, a NaN on one
rank stops or skips on every rank, and FSDP/DeepSpeed presets are refused where they cannot run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import torch

from sft_exp.errors import ConfigError
from sft_exp.preflight import plain, validate_config
from sft_exp.run.distributed import training_arguments
from tests.helpers import DEMO_EVAL_ROWS, NO_SAMPLE_GENERATIONS, REPO, TEST_ENV, compose

# Four logged steps over a small slice of the demo data, evaluated before and after on 64 held-out rows:
# what DDP changes is all here. Task evaluation (generation) is off: its DDP path is tested where it lives.
SHORT = [
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.save_steps=4",
    *NO_SAMPLE_GENERATIONS,
    "logger=none",
    "data.sources.0.max_samples=64",
    DEMO_EVAL_ROWS.format(64),
]
# The same with 16 held-out rows, and rank 1's loss NaN at step 2 (a forward hook on its input embeddings,
# added through the callbacks group; rank 0's loss stays finite).
NAN_ON_RANK_1 = [
    *SHORT[:-1],
    DEMO_EVAL_ROWS.format(16),
    "+callbacks.nan.rank=1",
    "+callbacks.nan.step=2",
    "+callbacks.nan._target_=tests.distributed_probes.NaNLossOnOneRank",
]
# Task evaluation back on for the DDP parity test (SHORT switches it off; a later `evals=` wins).
TASK_ON_7_PROMPTS = ["evals=heldout", "evals.heldout.limit=7", "evals.heldout.max_new_tokens=4"]
# One process's batch is both ranks' batches: 8 = 2 x 4 rows to train on, 32 = 2 x 16 rows to evaluate.
ONE_PROCESS = ["trainer.per_device_train_batch_size=8", "trainer.per_device_eval_batch_size=32"]
PER_RANK = ["trainer.per_device_train_batch_size=4", "trainer.per_device_eval_batch_size=16"]
PROCESS_ENV = {**TEST_ENV, "OMP_NUM_THREADS": "1"}  # two processes on a shared machine: no thread oversubscription


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir):
    rows = _rows(run_dir)
    return {row["step"]: row["loss"] for row in rows if "loss" in row}, rows


def _evals(rows):
    return {row["step"]: row for row in rows if "eval_loss" in row}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on a free port of this machine, never a fixed one another job may hold.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sft_exp",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=PROCESS_ENV, capture_output=True, text=True, timeout=300)


def _two_ranks(tmp_path, *args: str, timeout: float = 240) -> list[tuple[int, str]]:
    """Rank 0 and rank 1 as two plain processes, as `srun` starts them: (exit code, output) of each.

    Not torchrun: its agent stops every rank once one fails, which would hide a rank that hangs.
    A rank still running after `timeout` seconds fails the test (both are killed).
    """
    port = str(_free_port())
    procs, logs = [], []
    for rank in (0, 1):
        env = {
            **PROCESS_ENV,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        logs.append(tmp_path / f"rank{rank}.out")
        with logs[-1].open("w") as out:  # files, not pipes: a full pipe would block a rank mid-collective
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "sft_exp", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            )
    deadline = time.monotonic() + timeout
    try:
        codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(
            f"a rank was still running after {timeout}s (hung?):\n"
            + "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs)
        )
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    from sft_exp.train import run

    single = tmp_path / "single"
    run(compose([*SHORT, *ONE_PROCESS, f"run_dir={single}"]))  # in-process: faster
    # Each rank resolves its own folder here; rank 0's must win and rank 1's must be gone. The ranks also
    # split 7 held-out prompts of a task evaluation (an odd count: one rank has one more) and gather them.
    proc = _torchrun(*SHORT, *PER_RANK, f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}", *TASK_ON_7_PROMPTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = tmp_path / "rank0"
    assert not (tmp_path / "rank1").exists()

    expected, expected_rows = _losses(single)
    got, rows = _losses(shared)
    assert sorted(got) == [1, 2, 3, 4]
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)  # rank 0 alone writes: no row twice
    # The evaluation before training must not change training: the model still trains wrapped in DDP.
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    # Eval loss and metrics count every rank's rows and tokens once, as one process does.
    evals, expected_evals = _evals(rows), _evals(expected_rows)
    assert sorted(evals) == sorted(expected_evals) == [0, 4]
    for step, row in evals.items():
        assert row["eval_loss"] == pytest.approx(expected_evals[step]["eval_loss"], abs=1e-5), step
        assert row["eval_num_supervised_tokens"] == expected_evals[step]["eval_num_supervised_tokens"], step
    first_step = next(row for row in rows if "loss" in row)
    assert first_step["epoch"] == pytest.approx(8 / 64)  # the two ranks split one batch of 8, not two of 4
    log_lines = (shared / "__main__.log").read_text().splitlines()
    assert len(log_lines) == len(set(log_lines))  # no line written twice (rank 1 logs to its console only)
    assert (shared / "model" / "model.safetensors").is_file()
    for step in (0, 4):  # every prompt once, whichever rank generated it
        examples = [json.loads(line) for line in (shared / "evals" / "heldout" / f"step-{step}.jsonl").open()]
        assert sorted(e["index"] for e in examples) == list(range(7)), step
        assert "eval_heldout/exact_match" in evals[step]


@pytest.mark.multiprocess
def test_a_nan_loss_on_one_rank_stops_every_rank_naming_the_step(tmp_path):
    results = _two_ranks(
        tmp_path,
        *NAN_ON_RANK_1,
        *PER_RANK,
        "trainer.nonfinite_loss=stop",
        f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}",
    )
    for rank, (code, output) in enumerate(results):
        assert code == 2, f"rank {rank} exited {code}:\n{output[-3000:]}"
        assert "the training loss became NaN or infinite at step 2 on rank 1 of 2" in output, output[-3000:]
    assert not (tmp_path / "rank0" / "model").exists()


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
@pytest.mark.multiprocess
def test_skip_on_a_nan_loss_of_one_rank_keeps_every_replica_identical(tmp_path):
    digests = tmp_path / "digests"
    results = _two_ranks(
        tmp_path,
        *NAN_ON_RANK_1,
        *PER_RANK,
        "trainer.nonfinite_loss=skip",
        f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}",
        f"+callbacks.digest.folder={digests}",
        "+callbacks.digest._target_=tests.distributed_probes.WeightDigest",
    )
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{output[-3000:]}"
        assert "step 2 skipped: the loss was NaN or infinite on rank 1 of 2" in output, output[-3000:]
    replicas = [json.loads((digests / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["finite"] and r["global_step"] == 4 for r in replicas), replicas
    assert replicas[0]["sha256"] == replicas[1]["sha256"], "the replicas' weights differ after the skipped step"
    rows = _rows(tmp_path / "rank0")
    assert [r.get("skipped_steps") for r in rows if r.get("step") == 4 and "loss" in r] == [1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_relaunch_into_a_run_folder_is_decided_once_for_every_rank(tmp_path):
    """Both ranks relaunched into a folder holding a finished 2-rank run: with other settings both stop and the
    folder (its .hydra/ and log included) is as it was; with the same settings both train nothing."""

    def folder_bytes():
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    first = _torchrun(*SHORT, *PER_RANK, f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = folder_bytes()
    other = _torchrun(*SHORT, *PER_RANK, "optimizer.lr=1e-3", f"hydra.run.dir={tmp_path}")
    output = other.stdout + other.stderr
    assert other.returncode != 0 and output.count("holds a run with other settings (optimizer.lr: 0.002 -> 0.001)") == 2
    assert folder_bytes() == before
    same = _torchrun(*SHORT, *PER_RANK, f"hydra.run.dir={tmp_path}")
    assert same.returncode == 0 and "completed: nothing to train" in same.stdout + same.stderr, same.stderr[-3000:]
    assert folder_bytes() == before


@pytest.mark.multiprocess
def test_accelerate_launch_runs_the_same_job(tmp_path):
    # `--multi_gpu` is accelerate's torchrun launcher; on a CPU-only machine sft_exp picks gloo.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sft_exp",
        *SHORT,
        *PER_RANK,
        f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, rows = _losses(tmp_path / "rank0")
    assert sorted(got) == [1, 2, 3, 4] and next(r for r in rows if "loss" in r)["epoch"] == pytest.approx(8 / 64)


@pytest.mark.parametrize("strategy, package", [("deepspeed", "deepspeed"), ("fsdp", "torch.distributed.fsdp")])
def test_a_strategy_whose_package_is_missing_is_refused_naming_it(strategy, package, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )  # as on a machine without deepspeed
    if strategy == "fsdp":  # as on a torch without FSDP2
        import torch.distributed.fsdp as fsdp

        monkeypatch.delattr(fsdp, "fully_shard")
    with pytest.raises(ConfigError, match=f"distributed={strategy}") as err:
        validate_config(compose([f"distributed={strategy}"]))
    assert ("pip install" in str(err.value)) and ("distributed=ddp" in str(err.value) or "fsdp" in str(err.value))


def test_fsdp_is_accepted_by_this_torch():
    # FSDP2 is a submodule: hasattr(torch.distributed, "fsdp") is False until it is imported, which once made
    # this check refuse every torch.
    validate_config(compose(["distributed=fsdp"]))


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_a_sharding_strategy_in_one_process_says_what_it_does(strategy, caplog, monkeypatch):
    pytest.importorskip("deepspeed") if strategy == "deepspeed" else None
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING", logger="sft_exp"):
        validate_config(compose([f"distributed={strategy}"]))
    assert f"distributed={strategy} in one process" in caplog.text and "torchrun --nproc_per_node" in caplog.text
    assert not set(training_arguments(plain(compose([f"distributed={strategy}"]).distributed.training_args))) & {
        "fsdp",
        "fsdp_config",
        "deepspeed",
    }  # trains as one plain process


def test_a_sweep_under_torchrun_is_refused_with_the_way_to_do_it(tmp_path):
    # What torchrun sets for rank 0 of 2; the refusal comes before any process group is joined.
    env = {
        **PROCESS_ENV,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sft_exp", "-m", "loss=nll,dft", f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "hydra/launcher=slurm hydra.launcher.tasks_per_node=N" in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("*/model"))  # no job trained


def test_unknown_strategy_is_refused():
    with pytest.raises(ConfigError, match="distributed.strategy"):
        validate_config(compose(["distributed.strategy=zero5"]))


def test_presets_hand_transformers_its_own_arguments(monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: in one process there is nothing to shard
    fsdp = training_arguments(plain(compose(["distributed=fsdp"]).distributed.training_args))
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    ds = training_arguments(plain(compose(["distributed=deepspeed"]).distributed.training_args))
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
    from sft_exp.run.distributed import export_slurm_environment

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")  # recorded, so the teardown removes what export sets
        monkeypatch.delenv(key)
    # What SLURM and submitit set for task 1 of a 2-task job on one node.
    for key, value in dict(
        SUBMITIT_EXECUTOR="slurm",
        SLURM_JOB_ID="1234",
        SLURM_NTASKS="2",
        SLURM_PROCID="1",
        SLURM_LOCALID="1",
        SLURM_JOB_NODELIST="node7",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
    ).items():
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
        cfg = hydra_compose(
            "config",
            return_hydra_config=True,
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"],
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
