"""Sequence parallelism's memory: one process vs distributed=ulysses at sp_size=2, side by side, on CPU (gloo).

    python benchmarks/bench_sequence_parallel.py                   # ~8 min on 2 busy cores, < 3 GB in all
    python benchmarks/bench_sequence_parallel.py --row 8192 --cap-mb 200 --lengths 1024 2048 3072 ...

Two figures, each from real training steps of sft_exp's SFTTrainer (chunked head, fp32, AdamW, ZeRO-3 under
Ulysses, exactly as `python -m sft_exp distributed=ulysses` builds them; the rows are made here, one per step):
  1. peak activation memory per rank at one long row (--row tokens): one process vs each of the 2 ranks
     that split it (target: <= 0.6x);
  2. the longest row that trains under a fixed memory cap (--cap-mb of activation memory per process),
     one process vs sp_size=2 (target: >= 1.8x).

Activation memory of a step = the process's peak resident memory during the step (Linux VmHWM, reset at the
step's start through /proc/self/clear_refs) minus its resident memory at the start: what the step adds to
the model, optimizer state and batch already there. glibc is told to map every block of 64 KiB or more on its
own (MALLOC_MMAP_THRESHOLD_), so a freed activation goes back to the system and the next step's peak is its
own. Rows: random token ids, the first third a prompt (not trained), one example per row; each row length is
trained in ascending order (under Ulysses twice in a row: each of the two ranks' batches, split in turn).
The model: a Llama of --hidden width (4 heads, 2 key/value heads), wide enough that activations, not weights,
are what grows (its weights and Adam state are a few MB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENV = {
    **os.environ,
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


# ----------------------------------------------------------------------------- in each training process
def _memory_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def step_memory_callback(folder: Path):
    from transformers import TrainerCallback

    class StepMemory(TrainerCallback):
        """Each step's activation memory and the row width this rank's decoder saw, to `folder`/rank<N>.json."""

        def __init__(self):
            self.steps, self.width, self.start, self.started = [], None, 0, 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def width(module, args_, kwargs_):
                self.width = kwargs_["input_ids"].shape[-1]

            model.get_decoder().register_forward_pre_hook(width, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
            self.start, self.started = _memory_kb("VmRSS"), time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(
                {
                    "width": self.width,
                    "activation_mb": (_memory_kb("VmHWM") - self.start) / 1024,
                    "seconds": time.perf_counter() - self.started,
                }
            )

        def on_train_end(self, args, state, control, **kwargs):
            rank = int(os.environ.get("RANK", "0"))
            (folder / f"rank{rank}.json").write_text(json.dumps(self.steps))

    return StepMemory()


def worker(args) -> None:
    """One configuration, all its row lengths in ascending order: one process, or a rank of `torchrun`."""
    import datasets
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from sft_exp import compat
    from sft_exp.data.collator import collator_for
    from sft_exp.models.attention import use_varlen_sdpa
    from sft_exp.paths import config_dir
    from sft_exp.run import distributed, sequence_parallel
    from sft_exp.training.trainer import SFTTrainer
    from tests.helpers import prepared_rows  # random tokens, the first third a prompt

    split = distributed.world_size()
    torch.set_num_threads(max(1, args.cores // split))
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * max(args.lengths),
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    use_varlen_sdpa(model)  # as sft_exp loads sdpa
    attention = compat.attn_implementation(model)
    lengths = [n for n in args.lengths for _ in range(split)]  # under Ulysses each rank's batch, in turn
    if split > 1:
        preset = OmegaConf.to_container(OmegaConf.load(config_dir() / "distributed" / "deepspeed.yaml"))
        extra = distributed.training_arguments(preset["training_args"], "ulysses", split=split)
        collator = sequence_parallel.split_collator("ulysses", split, pad_token_id=0)
    else:
        extra, collator = {}, collator_for(0, packing=False, padding_free=None, attn_implementation=attention)
    trainer = SFTTrainer(
        model=model,
        train_dataset=datasets.Dataset.from_list(prepared_rows(lengths, args.vocab)),
        data_collator=collator,
        callbacks=[step_memory_callback(Path(args.out))],
        output_dir=str(Path(args.out) / "checkpoints"),
        max_steps=len(lengths),
        per_device_train_batch_size=1,
        logging_steps=1000,
        save_strategy="no",
        precision="fp32",
        extra_args={**extra, "train_sampling_strategy": "sequential"},
    )
    trainer.train()


# ----------------------------------------------------------------------------- the driver
def measure(split: int, args, lengths: list[int]) -> list[dict]:
    """Each length's activation memory per rank: [{"width": tokens, "activation_mb": [rank 0, rank 1, ...]}]."""
    out = Path(tempfile.mkdtemp(prefix=f"bench_sp{split}_"))
    worker_args = [
        "--worker",
        "--out",
        str(out),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
        "--vocab",
        str(args.vocab),
        "--cores",
        str(args.cores),
        "--lengths",
        *map(str, lengths),
    ]
    script = [str(Path(__file__).resolve()), *worker_args]
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(split)]
        if split > 1
        else [sys.executable]
    )
    proc = subprocess.run([*launch, *script], cwd=REPO, env=ENV, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"sp_size={split} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(split)]
    by_width: dict = {}  # under Ulysses each row length is trained twice (each rank's batch): the larger peak
    for steps in zip(*ranks):
        point = by_width.setdefault(steps[0]["width"] * split, {"activation_mb": [0.0] * split, "seconds": 0.0})
        point["activation_mb"] = [max(a, s["activation_mb"]) for a, s in zip(point["activation_mb"], steps)]
        point["seconds"] = max(point["seconds"], *(s["seconds"] for s in steps))
    return [{"width": width, **point} for width, point in sorted(by_width.items())]


def longest_under(cap_mb: float, points: list[dict]) -> int:
    """The longest row whose every rank stayed under the cap."""
    return max((p["width"] for p in points if max(p["activation_mb"]) <= cap_mb), default=0)


def crossing(cap_mb: float, points: list[dict], multiple: int = 64) -> int | None:
    """Where the activation memory reaches the cap, between the two measured rows around it (it grows linearly
    with the row here: attention on CPU keeps no (T, T) matrix); None if no measured row is over the cap."""
    points = sorted(points, key=lambda p: p["width"])
    above = next((i for i, p in enumerate(points) if max(p["activation_mb"]) > cap_mb), None)
    if not above:
        return None
    (w0, m0), (w1, m1) = ((p["width"], max(p["activation_mb"])) for p in points[above - 1 : above + 1])
    return int(w0 + (cap_mb - m0) * (w1 - w0) / (m1 - m0)) // multiple * multiple


def longest_trained(split: int, args, points: list[dict]) -> int:
    """The longest row that trained under the cap: the measured rows, then around the estimated crossing (2%
    short of it, at it, 64 tokens past it: a step's peak varies by ~1% from run to run), each trained for real."""
    estimate = crossing(args.cap_mb, points)
    if estimate is not None and estimate > longest_under(args.cap_mb, points):
        points = points + measure(split, args, [int(estimate * 0.98) // 64 * 64, estimate, estimate + 64])
    return longest_under(args.cap_mb, points)


def table(single: list[dict], split: list[dict]) -> None:
    print(f"{'row tokens':>10} | {'one process':>11} | {'sp=2 rank 0':>11} | {'sp=2 rank 1':>11} | ratio")
    by_width = {p["width"]: p["activation_mb"] for p in split}
    for point in single:
        ranks, one = by_width.get(point["width"]), point["activation_mb"][0]
        cells = (
            f"{ranks[0]:>11.1f} | {ranks[1]:>11.1f} | {max(ranks) / one:.2f}x" if ranks else f"{'':>11} | {'':>11} |"
        )
        print(f"{point['width']:>10} | {one:>11.1f} | {cells}")
    for point in split:
        if point["width"] not in {p["width"] for p in single}:
            print(
                f"{point['width']:>10} | {'':>11} | {point['activation_mb'][0]:>11.1f} | "
                f"{point['activation_mb'][1]:>11.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", type=int, default=16384, help="tokens of the long row of figure 1")
    parser.add_argument("--cap-mb", type=float, default=400.0, help="activation memory cap per process, figure 2")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[2048, 4096, 6144, 8192],
        help="row lengths measured for figure 2 (sp_size=2: twice each)",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument(
        "--cores", type=int, default=2, help="CPU threads in all: one process uses them all, each of the 2 ranks half"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    single = measure(1, args, sorted({*args.lengths, args.row}))
    split = measure(2, args, sorted({*(2 * n for n in args.lengths), args.row}))
    longest = longest_trained(1, args, single), longest_trained(2, args, split)
    at_row = [next(p for p in points if p["width"] == args.row) for points in (single, split)]
    one, per_rank = at_row[0]["activation_mb"][0], max(at_row[1]["activation_mb"])
    print(
        f"\nLlama hidden {args.hidden}, {args.layers} layers, 4 heads / 2 KV heads, fp32; sp_size=2: 2 CPU processes "
        f"over gloo, distributed=ulysses (ZeRO-3); load average {os.getloadavg()[0]:.2f}"
    )
    print("\nactivation memory per process (MB), by row length")
    table(single, split)
    print(
        f"\n1. a row of {args.row} tokens: one process {one:.1f} MB, sp_size=2 {per_rank:.1f} MB per rank: "
        f"{per_rank / one:.2f}x (target <= 0.6x)"
    )
    print(
        f"   time per step at that row, {args.cores} cores either way: one process {at_row[0]['seconds']:.1f} s, "
        f"sp_size=2 {at_row[1]['seconds']:.1f} s ({at_row[1]['seconds'] / at_row[0]['seconds']:.2f}x)"
    )
    ratio = longest[1] / longest[0] if longest[0] else float("nan")
    print(
        f"2. longest row trained under {args.cap_mb:.0f} MB of activations per process: one process {longest[0]} "
        f"tokens, sp_size=2 {longest[1]} tokens: {ratio:.2f}x (target >= 1.8x)"
    )


if __name__ == "__main__":
    main()
