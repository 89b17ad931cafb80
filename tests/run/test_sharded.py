"""FSDP2 and DeepSpeed ZeRO on 2 CPU processes (gloo) really shard, and train as one process does.

Each engine's run: 4 fp32 steps with an evaluation before training, eval_steps and a task evaluation,
against one process on the whole batch (computed once for the module). Losses within 1e-5, the model
sharded (DTensor parameters under FSDP2, ZeRO partitions under DeepSpeed), model/ saved as full weights
that from_pretrained loads and that equal the single process's.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.run.test_distributed import ONE_PROCESS, PER_RANK, SHORT, TASK_ON_7_PROMPTS, _evals, _losses, _torchrun

pytestmark = pytest.mark.multiprocess

# The same 4 steps, with the Trainer's evaluation every 2 steps on top of the one before training.
EVALUATED = [*SHORT, "trainer.eval_steps=2", *TASK_ON_7_PROMPTS]
# ZeRO-3 with nothing kept gathered between uses: lm_head.weight is an empty partition at every step
# outside the engine's forward, so the chunked head must gather it itself (the default config keeps it
# cached from step 2 on, and a test would pass by luck).
ZERO3_NOTHING_CACHED = [
    "+distributed.training_args.deepspeed.zero_optimization.stage3_max_reuse_distance=0",
    "distributed.training_args.deepspeed.zero_optimization.stage3_prefetch_bucket_size=0",
]
ENGINES = {
    "fsdp": ["distributed=fsdp"],
    "zero2": ["distributed=deepspeed", "distributed.training_args.deepspeed.zero_optimization.stage=2"],
    "zero3": ["distributed=deepspeed", *ZERO3_NOTHING_CACHED],
}


# Now and then (seen with ZeRO-3 and FSDP on gloo) a rank aborts in interpreter shutdown after everything
# is saved: a C++ thread still running when the process exits. Not fixed yet; reported, not hidden.
EXIT_ABORT = "terminate called without an active exception"


def _completed(run_dir) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["status"] == "completed"


def _has_deepspeed() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


ZERO3 = pytest.param("zero3", marks=pytest.mark.skipif(not _has_deepspeed(), reason="pip install deepspeed"))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    from sft_exp.train import run
    from tests.helpers import compose

    folder = tmp_path_factory.mktemp("single") / "run"
    run(compose([*EVALUATED, *ONE_PROCESS, f"run_dir={folder}"]))
    return folder


def _weights(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize(
    "engine",
    [
        "fsdp",
        pytest.param("zero2", marks=pytest.mark.slow),
        ZERO3,
    ],
)
def test_two_sharded_processes_equal_one_process(engine, single_process, tmp_path):
    probes = tmp_path / "probes"
    proc = _torchrun(
        *EVALUATED,
        *PER_RANK,
        *ENGINES[engine],
        f"hydra.run.dir={tmp_path}/run",
        f"+callbacks.probe.folder={probes}",
        "+callbacks.probe._target_=tests.distributed_probes.ShardingProbe",
    )
    if proc.returncode != 0 and EXIT_ABORT in proc.stderr and _completed(tmp_path / "run"):
        pytest.xfail(f"known: a rank aborted at exit after the run completed ({EXIT_ABORT!r}); see the README")
    assert proc.returncode == 0, proc.stderr[-4000:]
    shared = tmp_path / "run"

    expected, expected_rows = _losses(single_process)
    got, rows = _losses(shared)
    assert sorted(got) == [1, 2, 3, 4]
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    evals, expected_evals = _evals(rows), _evals(expected_rows)
    assert sorted(evals) == sorted(expected_evals) == [0, 2, 4]
    for step, row in evals.items():
        assert row["eval_loss"] == pytest.approx(expected_evals[step]["eval_loss"], abs=1e-5), step
        assert row["eval_heldout/exact_match"] == expected_evals[step]["eval_heldout/exact_match"], step

    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]
    full = ranks[0]["full_numel"]
    if engine == "fsdp":  # FSDP2: every parameter a DTensor, each rank holding about half
        assert all(r["dtensor_params"] == r["params"] > 0 and r["fsdp_modules"] > 0 for r in ranks), ranks
        assert sum(r["local_numel"] for r in ranks) == full, ranks
    elif engine == "zero3":  # every parameter a ZeRO-3 partition, empty outside the engine's forward
        assert all(r["ds_params"] == r["params"] > 0 and r["head_weight_numel"] == 0 for r in ranks), ranks
        assert all(full / 2 <= r["local_numel"] < 0.51 * full for r in ranks), ranks  # half each (padded)
    else:  # ZeRO-2: full parameters on each rank, optimizer state and gradients partitioned
        assert all(r["local_numel"] == full for r in ranks), ranks

    # model/ holds full weights (not a shard) that from_pretrained loads, equal to the single process's.
    saved, reference = _weights(shared / "model"), _weights(single_process / "model")
    assert saved.keys() == reference.keys()
    worst = max(float((saved[k] - reference[k]).abs().max()) for k in saved)
    assert worst <= 1e-5, worst


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp", ZERO3])
def test_dft_checkpointing_and_a_chunked_head_under_sharding_equal_one_process(engine, tmp_path):
    from sft_exp.train import run
    from tests.helpers import compose

    # 16 positions per chunk: several chunks per batch, each gathering the (sharded) head weight again.
    extra = ["loss=dft", "loss.chunk_size=16", "memory=checkpointing"]
    run(compose([*SHORT, *extra, *ONE_PROCESS, f"run_dir={tmp_path}/single"]))
    proc = _torchrun(*SHORT, *extra, *PER_RANK, *ENGINES[engine], f"hydra.run.dir={tmp_path}/run")
    if proc.returncode != 0 and EXIT_ABORT in proc.stderr and _completed(tmp_path / "run"):
        pytest.xfail(f"known: a rank aborted at exit after the run completed ({EXIT_ABORT!r}); see the README")
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected, _ = _losses(tmp_path / "single")
    got, _ = _losses(tmp_path / "run")
    assert sorted(got) == [1, 2, 3, 4]
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    saved, reference = _weights(tmp_path / "run" / "model"), _weights(tmp_path / "single" / "model")
    assert max(float((saved[k] - reference[k]).abs().max()) for k in saved) <= 1e-5


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp", ZERO3])
def test_lora_under_sharding_equals_one_process(engine, tmp_path):
    from sft_exp.train import run
    from tests.helpers import compose

    # No dropout: its masks come from each rank's RNG, so 2 x 4 rows draw other masks than 1 x 8 (DDP too).
    lora = ["peft=lora", "optimizer.lr=1e-2", "peft.lora_dropout=0.0"]
    run(compose([*SHORT, *lora, *ONE_PROCESS, f"run_dir={tmp_path}/single"]))
    proc = _torchrun(*SHORT, *lora, *PER_RANK, *ENGINES[engine], f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected, _ = _losses(tmp_path / "single")
    got, _ = _losses(tmp_path / "run")
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    saved, reference = _adapter(tmp_path / "run" / "model"), _adapter(tmp_path / "single" / "model")
    assert saved.keys() == reference.keys() and saved  # the adapter alone, full (not a shard)
    # Adam at lr 1e-2 turns float-rounding differences of near-zero gradients into ~1e-4 in the weights.
    assert max(float((saved[k] - reference[k]).abs().max()) for k in saved) <= 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp", ZERO3])
def test_resume_from_a_sharded_checkpoint_equals_the_straight_run(engine, tmp_path):
    import shutil

    every_2 = [*SHORT, "trainer.save_steps=2", *PER_RANK, *ENGINES[engine]]
    straight = tmp_path / "straight"
    assert _torchrun(*every_2, f"hydra.run.dir={straight}").returncode == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    proc = _torchrun(*every_2, f"hydra.run.dir={resumed}", "resume_from_checkpoint=true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _losses(resumed)[0] == _losses(straight)[0]
    got, expected = _weights(resumed / "model"), _weights(straight / "model")
    assert all(got[k].equal(expected[k]) for k in expected)  # bitwise
