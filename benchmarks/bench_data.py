"""Data preparation speed: sft_exp's prepare_datasets against TRL's SFTTrainer dataset preparation.

Both prepare the same 50,000 conversations (synthetic, 3 user/assistant exchanges each, or real
rows with --conversations) from the same JSONL file, with the same tokenizer (the embedded default:
ChatML with {% generation %} markers), assistant-only loss and the same max_length, each with a
fresh datasets cache, side by side in one run on this machine, each run in a fresh Python process.
Times include loading the JSONL file. Small runs (a few thousand rows) are dominated by start-up
costs; the figure is about 50,000.

    python benchmarks/bench_data.py [--rows 50000] [--num-proc 2] [--repeats 3] [--tokenizer PATH]
    python benchmarks/bench_data.py --conversations ../shared/data/conversations/fastchat_dummy_conversation.sharegpt.json \
        --tokenizer ../shared/data/tokenizers/phi-3-mini --chat-template chatml   # real rows and a real 32k tokenizer
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def write_real_conversations(path: Path, n_rows: int, source: Path) -> None:
    """Rows of a real ShareGPT or `messages` file (JSON array or JSONL), repeated in order to `n_rows`."""
    text = source.read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    for record in records:
        messages = record.get("messages") or [
            {"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]
        ]
        rows.append(json.dumps({"messages": messages}))
    with path.open("w") as out:
        for i in range(n_rows):
            out.write(rows[i % len(rows)] + "\n")


def rows_digest(input_ids, labels) -> str:
    """One hash of all rows' token ids and labels, whatever their order (sft_exp shuffles, TRL does not)."""
    rows = sorted(
        hashlib.sha1(np.asarray(ids, np.int32).tobytes() + np.asarray(row_labels, np.int32).tobytes()).digest()
        for ids, row_labels in zip(input_ids, labels)
    )
    return hashlib.sha256(b"".join(rows)).hexdigest()[:16]


def time_sft_exp(path: Path, tokenizer, max_length: int, num_proc: int | None) -> tuple[float, int, str]:
    from sft_exp.data import prepare_datasets

    cfg = {"sources": [{"path": str(path)}], "max_length": max_length, "assistant_only_loss": True,
           "num_proc": num_proc, "seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = prepare_datasets(cfg, tokenizer, cache_dir=cache)
        elapsed = time.perf_counter() - start
        digest = rows_digest(data.train["input_ids"], data.train["labels"])
    return elapsed, data.stats["supervised_tokens"], digest


def time_trl(path: Path, tokenizer, max_length: int, num_proc: int | None) -> tuple[float, int, str]:
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
        labels = prepared["labels"]
        digest = rows_digest(prepared["input_ids"], labels)
    supervised = sum(sum(label != -100 for label in row[1:]) for row in labels)
    return elapsed, supervised, digest


def _run_one(pipeline: str, path: Path, args) -> dict:
    """One pipeline in this process: {"seconds", "supervised" (trained tokens), "rows" (their hash)}."""
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(asset_path("tokenizer")))
    if args.chat_template:  # TRL's assistant_only_loss needs {% generation %} markers: give both the same template
        from sft_exp.data.templates import resolve_chat_template

        tokenizer.chat_template = resolve_chat_template(args.chat_template, tokenizer)
    timer = time_sft_exp if pipeline == "sft_exp" else time_trl
    seconds, supervised, digest = timer(path, tokenizer, args.max_length, args.num_proc)
    return {"seconds": seconds, "supervised": int(supervised), "rows": digest}


def _run_in_fresh_process(pipeline: str, path: Path, args) -> dict:
    """Each pipeline runs in its own new interpreter: neither inherits the other's warm heap or caches."""
    command = [sys.executable, __file__, "--only", pipeline, "--data", str(path), "--max-length", str(args.max_length)]
    command += ["--num-proc", str(args.num_proc)] if args.num_proc else []
    command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    command += ["--chat-template", args.chat_template] if args.chat_template else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {pipeline} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pipeline, alternating; the median counts")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: sft_exp/assets/tokenizer)")
    parser.add_argument("--chat-template", default=None, help="chatml, zephyr or a .jinja file with {% generation %}")
    parser.add_argument("--conversations", type=Path, default=None,
                        help="real ShareGPT or messages rows (JSON or JSONL), repeated to --rows (default: synthetic)")  # fmt: skip
    parser.add_argument("--only", choices=("sft_exp", "trl"), help=argparse.SUPPRESS)  # one timed run (internal)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(_run_one(args.only, Path(args.data), args)))
        return

    times = {"sft_exp": [], "trl": []}
    supervised, rows = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conversations.jsonl"
        if args.conversations:
            write_real_conversations(path, args.rows, args.conversations)
        else:
            write_conversations(path, args.rows)
        for _ in range(args.repeats):
            for pipeline in times:
                result = _run_in_fresh_process(pipeline, path, args)
                times[pipeline].append(result["seconds"])
                supervised[pipeline], rows[pipeline] = result["supervised"], result["rows"]
    ours, theirs = statistics.median(times["sft_exp"]), statistics.median(times["trl"])
    data = args.conversations.name if args.conversations else "synthetic, 3 exchanges each"
    print(f"\n{args.rows} conversations ({data}), max_length={args.max_length}, num_proc={args.num_proc}, "
          f"median of {args.repeats} run(s) each, every run in a fresh process")  # fmt: skip
    print(f"{'pipeline':<32}{'seconds':>10}{'rows/s':>10}{'trained tokens':>16}  runs")
    for name, pipeline in (("sft_exp prepare_datasets", "sft_exp"), ("TRL SFTTrainer._prepare_dataset", "trl")):
        seconds = statistics.median(times[pipeline])
        runs = " ".join(f"{t:.1f}" for t in times[pipeline])
        print(f"{name:<32}{seconds:>10.2f}{args.rows / seconds:>10.0f}{supervised[pipeline]:>16}  {runs}")
    same = rows["sft_exp"] == rows["trl"]
    print(f"same rows (token ids and labels, in any order): {'yes' if same else 'NO: not a like-for-like comparison'}")
    print(f"speed-up (TRL time / sft_exp time): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
