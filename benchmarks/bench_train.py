"""Training throughput and peak memory: sft_exp vs a bare torch loop vs TRL's SFTTrainer.

    python benchmarks/bench_train.py                       # vocab 32768 and 151936, all variants
    python benchmarks/bench_train.py --vocab 32768 --steps 3 --variants sft_exp bare

Same tiny Qwen2-architecture model (hidden 256, 4 layers, untied head), same conversational
rows (the demo conversations chained into multi-turn chats, truncated at max_length 512),
batch 8, assistant-only loss, fp32 on CPU, the same batches in the same order. Each variant runs
in a fresh process, so its peak RSS is its own. tokens/s counts the non-pad tokens of the timed
steps (after --warmup steps) over their wall time, data loading and optimizer step included.

  sft_exp  sft_exp.trainer.SFTTrainer with NLLLoss and all metrics logged every step
  bare     model(**batch, labels=...) -> backward -> AdamW step: no metrics, full logits
  trl      trl.SFTTrainer (when installed), logging every step
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("sft_exp", "bare", "trl")
MODEL = dict(model_type="qwen2", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             tie_word_embeddings=False, rope_theta=10000.0)
LR = 1e-4


# ----------------------------------------------------------------------------- data (every variant)
def chat_rows(tokenizer, n_rows: int, max_length: int) -> list:
    """Tokenized multi-turn chats with the assistant mask: demo conversations chained to ~max_length."""
    from sft_exp.paths import asset_path

    convs = [json.loads(line)["messages"] for line in open(asset_path("demo/train.jsonl"))]
    rows, i = [], 0
    while len(rows) < n_rows:
        messages, target = [], max_length * (0.6 + 0.4 * ((len(rows) * 7) % 10) / 10)  # 60-100% full
        while True:
            messages += convs[i % len(convs)]
            i += 1
            enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            if len(enc["input_ids"]) >= target:
                break
        ids, mask = enc["input_ids"][:max_length], enc["assistant_masks"][:max_length]
        rows.append({"input_ids": list(ids), "assistant_masks": list(mask)})
    return rows


def sft_exp_rows(rows: list) -> list:
    return [{"input_ids": r["input_ids"],
             "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])],
             "position_ids": list(range(len(r["input_ids"]))), "source_ids": [0] * len(r["input_ids"])}
            for r in rows]


def build(vocab: int, n_rows: int, max_length: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
    rows = chat_rows(tokenizer, n_rows, max_length)
    torch.manual_seed(0)
    config = AutoConfig.for_model(**MODEL, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return tokenizer, rows, model


# ----------------------------------------------------------------------------- variants (one per process)
class StepClock:
    """Wall time from the end of the warm-up steps to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.start, self.end = warmup, 0, None, None
        self.cpu_start = self.cpu_end = None

    def begin(self):
        """Called once before the first step: with --warmup 0 the first step is timed too."""
        if self.warmup == 0:
            self.start, self.cpu_start = time.perf_counter(), cpu_seconds()

    def step_done(self):
        self.steps += 1
        if self.steps == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), cpu_seconds()
        self.end, self.cpu_end = time.perf_counter(), cpu_seconds()


def trainer_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    return Clock()


def run_bare(model, tokenizer, rows, args, clock):
    import torch

    from sft_exp.data import SFTCollator

    collate = SFTCollator(pad_token_id=tokenizer.pad_token_id)
    data = sft_exp_rows(rows)
    batches = [collate(data[i: i + args.batch]) for i in range(0, len(data), args.batch)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    clock.begin()
    for batch in batches:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_done()


def common_trainer_args(args, out_dir: str, n_steps: int) -> dict:
    return dict(output_dir=out_dir, max_steps=n_steps, per_device_train_batch_size=args.batch, logging_steps=1,
                save_strategy="no", report_to=[], disable_tqdm=True, train_sampling_strategy="sequential",
                use_cpu=True, dataloader_num_workers=0)


def run_sft_exp(model, tokenizer, rows, args, clock):
    import datasets
    import torch

    from sft_exp.data import SFTCollator
    from sft_exp.loss import NLLLoss
    from sft_exp.memory import NoMemoryStrategy
    from sft_exp.trainer import SFTTrainer

    with tempfile.TemporaryDirectory() as out_dir:
        trainer = SFTTrainer(
            model=model, loss=NLLLoss(chunk_size=args.chunk_size), memory=NoMemoryStrategy(),
            train_dataset=datasets.Dataset.from_list(sft_exp_rows(rows)),
            data_collator=SFTCollator(pad_token_id=tokenizer.pad_token_id),
            optimizer_factory=functools.partial(torch.optim.AdamW, lr=LR), processing_class=tokenizer,
            precision="fp32", logging_first_step=False, **common_trainer_args(args, out_dir, len(rows) // args.batch),
        )
        trainer.add_callback(trainer_callback(clock))
        trainer.train()


def run_trl(model, tokenizer, rows, args, clock):
    import datasets
    import trl

    with tempfile.TemporaryDirectory() as out_dir:
        config = trl.SFTConfig(max_length=args.max_length, optim="adamw_torch", learning_rate=LR,
                               **common_trainer_args(args, out_dir, len(rows) // args.batch))
        # Pre-tokenized rows with `assistant_masks`: TRL masks everything else out of the loss.
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer)
        trainer.add_callback(trainer_callback(clock))
        trainer.train()


def worker(args) -> dict:
    import torch

    n_rows = args.batch * (args.warmup + args.steps)
    tokenizer, rows, model = build(args.vocab, n_rows, args.max_length)
    rss_before_mb = current_rss_mb()
    clock = StepClock(args.warmup)
    {"bare": run_bare, "sft_exp": run_sft_exp, "trl": run_trl}[args.worker](model, tokenizer, rows, args, clock)
    timed = rows[args.batch * args.warmup:]
    tokens = sum(len(r["input_ids"]) for r in timed)
    supervised = sum(sum(r["assistant_masks"]) for r in timed)
    return dict(variant=args.worker, vocab=args.vocab, tokens=tokens, supervised_share=supervised / tokens,
                seconds=clock.end - clock.start, tokens_per_s=tokens / (clock.end - clock.start),
                tokens_per_cpu_s=tokens / (clock.cpu_end - clock.cpu_start),
                peak_rss_mb=peak_rss_mb(), rss_before_train_mb=rss_before_mb, threads=torch.get_num_threads())


def cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to other load on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------- driver
def run_variant(variant: str, vocab: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", variant, "--vocab", str(vocab), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-length", str(args.max_length),
           "--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"[{variant} V={vocab}] failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(results: list) -> None:
    print(f"\n{'vocab':>7} {'variant':>8} {'tokens/s':>9} {'peak MB':>8} {'tok/s vs bare':>13} "
          f"{'tok/s vs trl':>12} {'mem vs bare':>11} {'mem vs trl':>10} {'tok/cpu-s vs bare':>17}")
    for vocab in sorted({r["vocab"] for r in results}):
        by = {r["variant"]: r for r in results if r["vocab"] == vocab}
        bare, trl = by.get("bare", {}), by.get("trl", {})
        for name, r in by.items():
            print(f"{vocab:>7} {name:>8} {r['tokens_per_s']:>9.0f} {r['peak_rss_mb']:>8.0f} "
                  f"{ratio(r['tokens_per_s'], bare.get('tokens_per_s')):>13} "
                  f"{ratio(r['tokens_per_s'], trl.get('tokens_per_s')):>12} "
                  f"{ratio(r['peak_rss_mb'], bare.get('peak_rss_mb')):>11} "
                  f"{ratio(r['peak_rss_mb'], trl.get('peak_rss_mb')):>10} "
                  f"{ratio(r['tokens_per_cpu_s'], bare.get('tokens_per_cpu_s')):>17}")
    share = results[0]["supervised_share"] if results else 0
    print(f"(supervised share of tokens: {share:.0%}; peak MB = max RSS of the variant's own process)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the fastest is kept")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=1024, help="sft_exp loss.chunk_size")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.vocab = args.vocab[0]
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    variants = list(args.variants)
    if "trl" in variants and subprocess.run([sys.executable, "-c", "import trl"]).returncode:
        print("trl is not installed: skipping the TRL variant", file=sys.stderr)
        variants.remove("trl")
    best = {}
    for vocab in args.vocab:
        for repeat in range(args.repeats):  # interleaved, best of N: other load on the machine only slows runs down
            for variant in variants:
                r = run_variant(variant, vocab, args)
                if not r:
                    continue
                print(f"V={vocab} {variant} #{repeat + 1}: {r['tokens_per_s']:.0f} tokens/s "
                      f"({r['tokens_per_cpu_s']:.0f}/cpu-s), peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
                key = (vocab, variant)
                if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = r
    results = list(best.values())
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
