"""distributed=ulysses on 2 gloo CPU processes splits each row in two, and trains as one process does.

The rows are long (512-2048 tokens: demo conversations chained, tests/run/long_rows.py), padding-free,
assistant-only with per-message weights, from two sources; the model a tiny Llama (4 heads, 2 key/value
heads). One process trains the same global batch (Ulysses' 2 ranks train one rank's batch at a time, split:
per_device_train_batch_size rows per step, as one process). Compared within 1e-5: every logged training
and evaluation metric (loss, nll, token accuracy, entropy, per-source losses, token counts, the task
evaluation's score), each example's loss (trainer.example_ledger) and the final weights; a resume from a
checkpoint is bitwise the straight split run.

    python -m pytest -m "multiprocess and not slow" tests/run/test_sequence_parallel.py  # ~1.5 min
    python -m pytest -m "multiprocess and slow" tests/run/test_sequence_parallel.py      # dft, LoRA, ZeRO-2, sp x dp
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.run.long_rows import LLAMA, write_sources
from tests.run.test_distributed import _torchrun
from tests.run.test_sharded import EXIT_ABORT, _completed

pytestmark = pytest.mark.multiprocess

STEPS = [
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.eval_steps=2",
    "trainer.save_steps=3",
    "logger=none",
    "optimizer.lr=1e-3",
    "trainer.per_device_train_batch_size=2",
    "evals=heldout",
    "evals.heldout.limit=3",
    "evals.heldout.max_new_tokens=4",
]
# Each of the 2 ranks evaluates 2 whole rows at a time; one process 4.
SINGLE, SPLIT = (
    ["trainer.per_device_eval_batch_size=4"],
    ["trainer.per_device_eval_batch_size=2", "distributed=ulysses"],
)
PROBE = "+callbacks.split._target_=tests.distributed_probes.SplitProbe"
SKIPPED = ("runtime", "per_second", "flos", "preparation_time", "train_loss")  # timings; train_loss: the resumed part's


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("long_rows"))


def _single(args, folder):
    from sft_exp.train import run
    from tests.helpers import compose

    run(compose([*args, f"run_dir={folder}"]))
    return folder


ABORTED_AT_EXIT = set()  # run folders whose run completed before a rank aborted in interpreter shutdown


def _split(args, folder):
    return _finished(_torchrun(*args, f"hydra.run.dir={folder}"), folder)


def _finished(proc, folder):
    if proc.returncode != 0 and EXIT_ABORT in proc.stderr and _completed(folder):
        ABORTED_AT_EXIT.add(folder)  # compared all the same; reported by report_exit_aborts
        return folder
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folder


def report_exit_aborts(*folders):
    """After a test's comparisons passed: the known abort at exit (test_sharded.py), reported, not hidden."""
    if ABORTED_AT_EXIT.intersection(folders):
        pytest.xfail(
            f"compared equal, but a rank aborted at exit after the run completed ({EXIT_ABORT!r}); see test_sharded.py"
        )


@pytest.fixture(scope="module")
def runs(long_data, tmp_path_factory):
    """One process and the same run split by Ulysses across 2 processes (with the split probe)."""
    base = tmp_path_factory.mktemp("ulysses")
    args = [LLAMA, *long_data, *STEPS, "trainer.example_ledger=true"]
    single = _single([*args, *SINGLE], base / "single")
    split = _split([*args, *SPLIT, PROBE, f"+callbacks.split.folder={base / 'probe'}"], base / "split")
    return single, split, base / "probe"


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(got_folder, expected_folder, tolerance):
    got, expected = _rows(got_folder), _rows(expected_folder)
    keys = [[sorted(k for k in r if not any(part in k for part in SKIPPED)) for r in rows] for rows in (got, expected)]
    assert keys[0] == keys[1]  # the same rows and metrics, in order
    worst = {}
    for row, reference in zip(got, expected):
        for key, value in reference.items():
            if isinstance(value, (int, float)) and not any(part in key for part in SKIPPED):
                worst[key] = max(worst.get(key, 0.0), abs(row[key] - value))
    assert max(worst.values()) <= tolerance, {k: v for k, v in worst.items() if v > tolerance}
    return got


def _weights(folder, name="model.safetensors"):
    from safetensors.torch import load_file

    return load_file(folder / "model" / name)


def assert_same_weights(got_folder, expected_folder, tolerance, name="model.safetensors"):
    got, expected = _weights(got_folder, name), _weights(expected_folder, name)
    assert got.keys() == expected.keys() and got
    worst = max(float((got[k] - expected[k]).abs().max()) for k in got)
    assert worst <= tolerance, worst


def test_ulysses_splits_each_row_and_trains_as_one_process(runs):
    single, split, probe = runs
    rows = assert_same_metrics(split, single, tolerance=1e-5)
    assert_same_weights(split, single, tolerance=1e-5)
    steps = [r["step"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert steps == [1, 2, 3, 4] and [r["step"] for r in evals] == [0, 2, 4]  # before, during and after training
    for key in ("loss/long_a", "loss/long_b", "entropy", "mean_token_accuracy", "num_tokens"):
        assert key in rows[1], key
    assert all("eval_heldout/exact_match" in r and "eval_loss/long_b" in r for r in evals)
    # Really split: rank 0's decoder saw the start of the first row, rank 1 the rest of it (then the end padding).
    seen = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0]["input_ids_shape"] == seen[1]["input_ids_shape"] and seen[0]["input_ids_shape"][0] == 2
    first_row = seen[0]["position_ids"][0] + seen[1]["position_ids"][0]
    length = first_row.index(0, 1) if 0 in first_row[1:] else len(first_row)
    assert first_row[:length] == list(range(length)) and length > len(seen[0]["position_ids"][0]) >= 256
    assert first_row[length:] == list(range(len(first_row) - length))  # the padding: one example, not trained
    assert "each row split across 2 ranks" in (split / "__main__.log").read_text()
    # Each example's loss and accuracy (trainer.example_ledger; 8 rows trained, 8 held out at 3 evaluations):
    # the parts of an example on the two ranks add up.
    import pandas as pd

    keys = ["split", "epoch", "step", "source", "row_id"]
    ledgers = [
        pd.read_parquet(folder / "examples.parquet").sort_values(keys).reset_index(drop=True)
        for folder in (split, single)
    ]
    assert ledgers[0][keys + ["tokens"]].equals(ledgers[1][keys + ["tokens"]]) and len(ledgers[0]) == 8 + 3 * 8
    assert (ledgers[0]["loss"] - ledgers[1]["loss"]).abs().max() <= 1e-5
    assert ledgers[0]["token_accuracy"].equals(ledgers[1]["token_accuracy"])
    report_exit_aborts(split)


def test_ulysses_resumes_from_a_checkpoint_bitwise(runs, long_data, tmp_path):
    _, straight, _ = runs
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "model")
    assert not (resumed / "checkpoints" / "checkpoint-4").exists()  # no final checkpoint unless asked
    # From step 3 of 4: of the 2 split micro-batches the ranks' second batches make, the first was trained.
    _split([LLAMA, *long_data, *STEPS, *SPLIT, "resume_from_checkpoint=true"], resumed)
    assert_same_metrics(resumed, straight, tolerance=0.0)
    got, expected = _weights(resumed), _weights(straight)
    assert all(got[k].equal(expected[k]) for k in expected)  # bitwise
    report_exit_aborts(straight, resumed)


@pytest.mark.parametrize(
    "variant", ["packing", *(pytest.param(v, marks=pytest.mark.slow) for v in ("dft", "lora", "zero2"))]
)
def test_ulysses_variants_train_as_one_process(variant, long_data, tmp_path):
    extra = {
        "packing": ["data.packing=true"],  # several examples in a split row, apart by position_ids
        "dft": ["loss=dft", "loss.chunk_size=64", "memory=checkpointing"],  # several head chunks per shard;
        # each layer's forward, all-to-alls included, run again in the backward
        "lora": ["peft=lora", "peft.lora_dropout=0.0"],  # dropout draws differ with the batch layout
        "zero2": [],
    }[variant]
    engine = ["distributed.training_args.deepspeed.zero_optimization.stage=2"] if variant == "zero2" else []
    args = [LLAMA, *long_data, *STEPS, *extra]
    single = _single([*args, *SINGLE], tmp_path / "single")
    split = _split([*args, *SPLIT, *engine], tmp_path / "split")
    assert_same_metrics(split, single, tolerance=1e-5)
    assert_same_weights(split, single, 1e-5, "adapter_model.safetensors" if variant == "lora" else "model.safetensors")
    report_exit_aborts(split)


@pytest.mark.slow
def test_ulysses_groups_with_data_parallelism_train_as_one_process(long_data, tmp_path):
    """4 processes, sp_size=2: 2 Ulysses groups, each splitting its rows. Per optimizer step each group trains 2
    micro-batches (gradient accumulation 2) of 1 row: the 4 rows one process trains with accumulation 4."""
    import subprocess
    import sys

    from tests.run.test_distributed import PROCESS_ENV, REPO

    args = [
        LLAMA,
        *long_data,
        "trainer.max_steps=3",
        "trainer.logging_steps=1",
        "evals=none",
        "logger=none",
        "trainer.per_device_train_batch_size=1",
        "optimizer.lr=1e-3",
    ]
    single = _single(
        [*args, "trainer.gradient_accumulation_steps=4", "trainer.per_device_eval_batch_size=4"], tmp_path / "single"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "sft_exp",
        *args,
        "trainer.gradient_accumulation_steps=2",
        "trainer.per_device_eval_batch_size=1",
        "distributed=ulysses",
        "distributed.sp_size=2",
        f"hydra.run.dir={tmp_path / 'split'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=PROCESS_ENV, capture_output=True, text=True, timeout=600, check=False)
    split = _finished(proc, tmp_path / "split")
    assert_same_metrics(split, single, tolerance=1e-5)
    assert_same_weights(split, single, tolerance=1e-5)
    report_exit_aborts(split)


@pytest.mark.gpu
@pytest.mark.skipif(
    not __import__("torch").cuda.device_count() >= 2,
    reason="needs 2 CUDA GPUs (ring attention has "
    "no CPU kernel; on CPU distributed=ring is refused, tests/run/test_sequence_parallel_config.py)",
)
def test_ring_splits_rows_on_two_gpus_and_trains_as_one_process(long_data, tmp_path):
    # Both ranks of the ring hold the same batch (accelerate gives a context-parallel group one), each half of it.
    args = [
        LLAMA,
        *long_data,
        *STEPS,
        "trainer.precision=fp32",
        "data.padding_free=false",
        "trainer.per_device_eval_batch_size=2",
    ]
    single = _single([*args, "model.attn_implementation=sdpa"], tmp_path / "single")
    split = _split([*args, "distributed=ring"], tmp_path / "split")
    assert "each row split across 2 ranks (distributed=ring)" in (split / "__main__.log").read_text()
    assert_same_metrics(split, single, tolerance=1e-4)  # CUDA's SDPA kernels against the ring's merged blocks
    assert_same_weights(split, single, tolerance=1e-4)
    report_exit_aborts(split)
