"""Data preparation speed: sft_exp's prepare_datasets against TRL's SFTTrainer dataset preparation.

Both prepare the same 50,000 synthetic conversations (3 user/assistant exchanges each) from the same
JSONL file, with the same tokenizer (the embedded default: ChatML with {% generation %} markers),
assistant-only loss and the same max_length, each with a fresh datasets cache, side by side in one
run on this machine. Times include loading the JSONL file.

    python benchmarks/bench_data.py [--rows 50000] [--num-proc 1] [--tokenizer PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

WORDS = ("cat dog bird tree moon sun river stone red blue green small large quick slow count sort reverse "
         "repeat first last word number letter apple bread water fire wind cloud rain snow").split()  # fmt: skip


def write_conversations(path: Path, n_rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    with path.open("w") as out:
        for _ in range(n_rows):
            messages = []
            for _ in range(3):
                messages.append({"role": "user", "content": sentence(4, 20)})
                messages.append({"role": "assistant", "content": sentence(3, 30)})
            out.write(json.dumps({"messages": messages}) + "\n")


def time_sft_exp(path: Path, tokenizer, max_length: int, num_proc: int | None) -> tuple[float, int]:
    from sft_exp.data import prepare_datasets

    cfg = {"sources": [{"path": str(path)}], "max_length": max_length, "assistant_only_loss": True,
           "num_proc": num_proc, "seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = prepare_datasets(cfg, tokenizer, cache_dir=cache)
        elapsed = time.perf_counter() - start
    return elapsed, data.stats["supervised_tokens"]


def time_trl(path: Path, tokenizer, max_length: int, num_proc: int | None) -> tuple[float, int]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from trl import SFTConfig, SFTTrainer

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_length=max_length, assistant_only_loss=True, report_to=[],
                         dataset_num_proc=num_proc, use_cpu=True)  # fmt: skip
        tiny = datasets.Dataset.from_list([json.loads(path.open().readline())])
        trainer = SFTTrainer(model=model, args=args, train_dataset=tiny, processing_class=tokenizer)
        start = time.perf_counter()
        raw = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
        prepared = trainer._prepare_dataset(raw, tokenizer, args, False, None, "train")
        elapsed = time.perf_counter() - start
    supervised = sum(sum(label != -100 for label in labels[1:]) for labels in prepared["labels"])
    return elapsed, supervised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=None)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: sft_exp/assets/tokenizer)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(asset_path("tokenizer")))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conversations.jsonl"
        write_conversations(path, args.rows)
        ours, ours_supervised = time_sft_exp(path, tokenizer, args.max_length, args.num_proc)
        theirs, theirs_supervised = time_trl(path, tokenizer, args.max_length, args.num_proc)
    print(f"\n{args.rows} conversations x 3 exchanges, max_length={args.max_length}, num_proc={args.num_proc}")
    print(f"{'pipeline':<28}{'seconds':>10}{'rows/s':>12}{'trained tokens':>16}")
    for name, seconds, supervised in (("sft_exp prepare_datasets", ours, ours_supervised),
                                      ("TRL SFTTrainer._prepare_dataset", theirs, theirs_supervised)):  # fmt: skip
        print(f"{name:<28}{seconds:>10.2f}{args.rows / seconds:>12.0f}{supervised:>16}")
    print(f"speed-up (TRL time / sft_exp time): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
