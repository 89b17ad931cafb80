"""hydra/launcher=slurm on a real single-node SLURM cluster (tests/services/slurm_cluster.sh starts it).

Marked `slurm`: skipped where the cluster cannot be started (no slurm-wlm/munge and no apt-get to
install them, or not root). Jobs run the tiny default model on the node's CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, compose
from tests.run.test_distributed import ONE_PROCESS, PER_RANK, PROCESS_ENV, SHORT, _losses

pytestmark = pytest.mark.slurm

CLUSTER = REPO / "tests" / "services" / "slurm_cluster.sh"
# One CPU per task, no GPU (the preset asks for one per node: a CPU-only cluster would never start the job).
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]
TINY = [
    "trainer.max_steps=2",
    "trainer.logging_steps=1",
    "trainer.save_steps=2",
    "evals=none",
    "logger=none",
    "data.sources.0.max_samples=16",
    "data.sources.0.eval_max_samples=8",
]


@pytest.fixture(scope="module")
def slurm_env():
    if not CLUSTER.is_file() or os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"no SLURM test cluster here: {started.stderr.strip()[-500:]}")
    conf = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    return {**PROCESS_ENV, "SLURM_CONF": conf}


def _sweep_command(sweep_dir: Path, *overrides: str) -> list:
    return [sys.executable, "-m", "sft_exp", "-m", *LAUNCHER, f"hydra.sweep.dir={sweep_dir}", *overrides]


def _sweep(env, sweep_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _sweep_command(sweep_dir, *overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _summaries(sweep_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_a_two_job_sweep_leaves_two_complete_run_folders(slurm_env, tmp_path):
    job = _sweep(slurm_env, tmp_path, *TINY, "loss=nll,dft")
    assert job.returncode == 0, job.stderr[-3000:]
    summaries = _summaries(tmp_path)
    assert sorted(summaries) == ["0", "1"]
    assert all(s["status"] == "completed" and s["global_step"] == 2 for s in summaries.values()), summaries
    assert all((tmp_path / n / "model" / "model.safetensors").is_file() for n in summaries)
    overrides = [json.loads((tmp_path / n / "run_info.json").read_text())["overrides"] for n in summaries]
    losses = sorted(o for job_overrides in overrides for o in job_overrides if o.startswith("loss="))
    assert losses == ["loss=dft", "loss=nll"], losses


def test_a_failing_job_is_reported_failed_and_the_other_completes(slurm_env, tmp_path):
    # Job 0's loss is NaN at step 1 (trainer.nonfinite_loss=stop); job 1's hook waits for a step that never comes.
    job = _sweep(
        slurm_env,
        tmp_path,
        *TINY,
        "+callbacks.nan._target_=tests.distributed_probes.NaNLossOnOneRank",
        "+callbacks.nan.rank=0",
        "+callbacks.nan.step=1,1000",
    )
    assert job.returncode == 0, job.stderr[-3000:]
    status = {n: s["status"] for n, s in _summaries(tmp_path).items()}
    assert status == {"0": "failed", "1": "completed"}, status
    assert "NaN or infinite at step 1" in _summaries(tmp_path)["0"]["error"]


def test_one_job_with_two_tasks_trains_as_two_ranks_equal_to_one_process(slurm_env, tmp_path):
    from sft_exp.train import run

    single = tmp_path / "single"
    run(compose([*SHORT, *ONE_PROCESS, f"run_dir={single}"]))
    job = _sweep(slurm_env, tmp_path / "sweep", *SHORT, *PER_RANK, "hydra.launcher.tasks_per_node=2")
    assert job.returncode == 0, job.stderr[-3000:]
    got, rows = _losses(tmp_path / "sweep" / "0")
    expected, _ = _losses(single)
    assert sorted(got) == [1, 2, 3, 4]
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    assert next(r for r in rows if "loss" in r)["epoch"] == pytest.approx(8 / 64)  # 2 ranks x 4 rows


def test_a_job_that_dies_without_a_result_ends_the_wait(slurm_env, tmp_path):
    # Job 0 SIGKILLs itself at step 1 (as the OOM killer would): no result file, and no sacct on this cluster.
    started = time.monotonic()
    job = _sweep(
        slurm_env,
        tmp_path,
        *TINY,
        "+callbacks.die._target_=tests.distributed_probes.KillSelfAtStep",
        "+callbacks.die.step=1,1000",
        timeout=420,
    )
    assert job.returncode != 0
    assert "has not produced any output (state: FAILED)" in job.stdout + job.stderr, job.stderr[-3000:]
    assert time.monotonic() - started < 400


def test_a_sweep_without_a_reachable_controller_fails_at_submission(tmp_path):
    if subprocess.run(["which", "sinfo"], capture_output=True).returncode != 0:
        pytest.skip("no sinfo (SLURM client) on this machine")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    conf = tmp_path / "slurm.conf"  # a controller on a port where nothing listens
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=nohost(127.0.0.1)\nSlurmctldPort=9\nMessageTimeout=3\n"
        "AuthType=auth/munge\nNodeName=nohost CPUs=1\nPartitionName=p Nodes=nohost\n"
    )
    started = time.monotonic()
    job = _sweep({**PROCESS_ENV, "SLURM_CONF": str(conf)}, tmp_path / "sweep", *TINY, "loss=nll,dft", timeout=120)
    output = job.stdout + job.stderr
    assert job.returncode == 2, output[-3000:]
    assert "`sinfo` failed, so no job was submitted" in output and "Unable to contact slurm controller" in output
    assert f"SLURM_CONF={conf}" in output
    assert time.monotonic() - started < 60
    assert not (tmp_path / "sweep" / ".submitit").exists()


# ----------------------------------------------------------------------------- preemption and time limit
# Long enough to be stopped part-way; no scheduled checkpoint (save_steps past the run), so the only one the
# job can resume from is the one its signal made. One thread in both runs: the same float sums, bitwise.
def _long(steps: int) -> list:
    return [
        f"trainer.max_steps={steps}",
        "trainer.logging_steps=10",
        "trainer.save_steps=100000",
        "trainer.threads=1",
        "evals=none",
        "logger=none",
        "data.sources.0.max_samples=256",
        "data.sources.0.eval_max_samples=8",
        "trainer.eval_steps=100000",
    ]


def _straight_run(run_dir: Path, overrides: list) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sft_exp", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=PROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _steps_lasting(seconds: float, run_dir: Path) -> int:
    """Steps of `_long` that train for about `seconds` on this machine now: a fixed count finished inside the
    first attempt on a faster machine, and nothing was left for the signal to stop."""
    _straight_run(run_dir, _long(200))
    runtime = json.loads((run_dir / "summary.json").read_text())["train_runtime_s"]
    return max(200, int(200 * seconds / runtime) // 10 * 10)


def _last_step(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return max((row.get("step", 0) for row in rows), default=0)


def _assert_resumed_to_the_same_weights(job_dir: Path, reference: Path, log: str) -> list:
    from safetensors.torch import load_file

    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    saved = sorted(int(p.name.split("-")[-1]) for p in (job_dir / "checkpoints").glob("checkpoint-*"))
    saved = [step for step in saved if step < summary["global_step"]]  # the last step's is the end's
    assert saved, "no checkpoint saved at a signal"
    assert "was requeued (SLURM_RESTART_COUNT=" in log and f"checkpoint-{saved[-1]}" in log, log[-3000:]
    weights = load_file(job_dir / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(weights[name].equal(expected[name]) for name in expected), "weights differ from the straight run"
    return saved


def _cancel_jobs(env, sweep_dir: Path) -> None:
    """A failed test must not leave its job running (or requeued) on the cluster for the next test."""
    jobs = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.name.isdigit()]
    if jobs:
        subprocess.run(["scancel", *jobs], env=env, capture_output=True)


def _job_log(sweep_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(sweep_dir.glob(".submitit/*/*.out")))


def test_a_preempted_job_saves_at_the_signal_and_resumes_to_the_same_weights(slurm_env, tmp_path):
    overrides = _long(_steps_lasting(40, tmp_path / "calibration"))  # step 100 comes well before the end
    _straight_run(tmp_path / "straight", overrides)
    sweep_dir = tmp_path / "sweep"
    cmd = _sweep_command(sweep_dir, "hydra.launcher.partition=low", *overrides)
    sweep = subprocess.Popen(cmd, cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while _last_step(sweep_dir / "0") < 100:  # part-way through the first attempt
            assert sweep.poll() is None and time.monotonic() < deadline, "the job never reached step 100"
            time.sleep(1)
        # The node's CPUs as SLURM counts them (nproc would follow an OMP_NUM_THREADS set by an earlier test).
        cpus = subprocess.run(
            ["sinfo", "-h", "-o", "%c"], env=slurm_env, capture_output=True, text=True
        ).stdout.split()[0]
        # A job on the high-priority partition that needs every CPU of the node: the running job is preempted.
        subprocess.run(
            ["sbatch", "-p", "high", "-c", cpus, "-o", str(tmp_path / "high.out"), "--wrap", "sleep 2"],
            env=slurm_env,
            check=True,
            capture_output=True,
        )
        output, _ = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
        _cancel_jobs(slurm_env, sweep_dir)
    assert sweep.returncode == 0, output[-3000:]
    log = _job_log(sweep_dir)
    saved = _assert_resumed_to_the_same_weights(sweep_dir / "0", tmp_path / "straight", log)
    assert saved[-1] >= 100 and "this job is preempted" in log, log[-3000:]


def test_a_job_past_its_time_limit_is_requeued_and_resumes_to_the_same_weights(slurm_env, tmp_path):
    # timeout_min=2, USR2 asked 30 s before it; SLURM may send it up to 60 s early, so it comes 30-90 s into an
    # attempt. 110 s of training (after ~10 s of start) cannot finish in the first attempt; each attempt ends
    # at its signal and the next resumes there. Requeues are not capped here (an attempt whose signal comes
    # during start-up makes no progress, and counts).
    overrides = _long(_steps_lasting(110, tmp_path / "calibration"))
    _straight_run(tmp_path / "straight", overrides)
    limit = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=20"]
    try:
        sweep = _sweep(slurm_env, tmp_path / "sweep", *overrides, *limit, timeout=1200)
    finally:
        _cancel_jobs(slurm_env, tmp_path / "sweep")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    log = _job_log(tmp_path / "sweep")
    _assert_resumed_to_the_same_weights(tmp_path / "sweep" / "0", tmp_path / "straight", log)
    assert "this job is timed-out" in log, log[-3000:]
