"""The GPU check: one program, one GPU (H100/H200), under 10 minutes, one table.

    python benchmarks/gpu_check.py                 # everything
    python benchmarks/gpu_check.py --only speed memory

Checks, each in its own process with its own time limit (a failure is a row, not the end):
  speed     sft_exp vs TRL SFTTrainer (and TRL with Liger kernels when liger-kernel is installed):
            tokens/s and peak CUDA memory, Qwen2.5-0.5B-shaped random model, bf16 autocast, packing,
            gradient checkpointing on both, the same packed examples, flash-attention-2 when installed
  memory    memory=offload vs memory=checkpointing at long context (one 16k-token row per step):
            figure: offload >= 30% less peak for <= 15% slowdown
  qlora     peft=qlora (bitsandbytes 4-bit base + LoRA) through `python -m sft_exp`: trains, loss finite
  fsdp      distributed=fsdp at world size 1 (torchrun) with the chunked head: per-step losses equal
            to the plain run's within bf16 tolerance
  deepspeed distributed=deepspeed (ZeRO-3) at world size 1, the same comparison
On a machine without CUDA it says so and exits 0. CI never runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train import SHAPES  # noqa: E402 (a sibling script, found beside this one)

CHECKS = ("speed", "memory", "qlora", "fsdp", "deepspeed")
# Qwen2.5-0.5B's shape (bench_train.py, beside this file), random weights; the vocabulary is the tokenizer's.
QWEN_0_5B = {k: v for k, v in SHAPES["qwen2.5-0.5b"].items() if k != "vocab_size"}
LIMIT_S = {"speed": 150, "memory": 120, "qlora": 90, "fsdp": 90, "deepspeed": 120}
BF16_LOSS_TOLERANCE = 0.02  # relative, per step: bf16 autocast runs that differ in reduction order
CHATML = (
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
    "{%- endfor %}"
)


# ----------------------------------------------------------------------------- shared pieces
def tokenizer():
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tok = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def long_examples(tok, n: int, max_length: int) -> list:
    """n examples: the demo conversations chained to 30-100% of max_length, assistant-only labels."""
    from sft_exp.paths import asset_path

    convs = [json.loads(line)["messages"] for line in open(asset_path("demo/train.jsonl"))]
    rows, i = [], 0
    while len(rows) < n:
        messages, target = [], max_length * (0.3 + 0.7 * ((len(rows) * 7) % 10) / 10)
        while True:
            messages += convs[i % len(convs)]
            i += 1
            enc = tok.apply_chat_template(
                messages, chat_template=CHATML, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            if len(enc["input_ids"]) >= target:
                break
        ids, mask = list(enc["input_ids"][:max_length]), list(enc["assistant_masks"][:max_length])
        rows.append(
            {
                "input_ids": ids,
                "labels": [t if m else -100 for t, m in zip(ids, mask)],
                "position_ids": list(range(len(ids))),
                "source_ids": [0] * len(ids),
            }
        )
    return rows


def qwen_model(vocab_size: int, attn: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**QWEN_0_5B, vocab_size=vocab_size)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).cuda()


def attention() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "sdpa"


class Meter:
    """CUDA-synchronized wall time of the steps after `warmup`, and the real tokens each step collated."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.start, self.end, self.tokens = warmup, 0, None, None, []

    def counting(self, collate):
        def wrapped(features):
            self.tokens.append(sum(len(f["input_ids"]) for f in features))
            return collate(features)

        return wrapped

    def callback(self):
        import torch
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                meter.steps += 1
                if meter.steps == meter.warmup:
                    meter.start = time.perf_counter()
                    torch.cuda.reset_peak_memory_stats()
                meter.end = time.perf_counter()

        return Clock()

    def result(self) -> dict:
        import torch

        tokens = sum(self.tokens[self.warmup : self.steps])
        return dict(tokens_per_s=tokens / (self.end - self.start), peak_gb=torch.cuda.max_memory_allocated() / 2**30)


def trainer_args(out: str, steps: int, batch: int) -> dict:
    return dict(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        learning_rate=1e-5,
        dataloader_num_workers=0,
    )


# ----------------------------------------------------------------------------- in-process workers
def train_sft_exp(rows, tok, *, memory: str, batch: int, steps: int, warmup: int, attn: str) -> dict:
    import datasets

    from sft_exp.data.collator import collator_for
    from sft_exp.data.packing import pack_bfd
    from sft_exp.training.losses import NLLLoss
    from sft_exp.training.memory import ActivationOffloading, GradientCheckpointing
    from sft_exp.training.trainer import SFTTrainer

    max_length = max(len(r["input_ids"]) for r in rows)
    packed = pack_bfd(datasets.Dataset.from_list(rows), max_length)
    from sft_exp.models.attention import use_varlen_sdpa

    model = qwen_model(len(tok), attn)
    use_varlen_sdpa(model)  # as sft_exp's ModelLoader does with sdpa (no-op with flash-attention)
    strategy = ActivationOffloading() if memory == "offload" else GradientCheckpointing()
    strategy.apply(model)
    meter = Meter(warmup)
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model,
            loss=NLLLoss(),
            memory=strategy,
            train_dataset=packed,
            data_collator=meter.counting(
                collator_for(
                    tok.pad_token_id,
                    packing=True,
                    padding_free=None,
                    attn_implementation=model.config._attn_implementation,
                )
            ),
            processing_class=tok,
            precision="bf16",
            **trainer_args(out, steps, batch),
        )
        trainer.add_callback(meter.callback())
        trainer.train()
    return meter.result()


def train_trl(rows, tok, *, liger: bool, batch: int, steps: int, warmup: int, attn: str) -> dict:
    import datasets
    import trl

    model = qwen_model(len(tok), attn)
    data = datasets.Dataset.from_list(
        [{"input_ids": r["input_ids"], "assistant_masks": [int(x != -100) for x in r["labels"]]} for r in rows]
    )
    meter = Meter(warmup)
    with tempfile.TemporaryDirectory() as out:
        config = trl.SFTConfig(
            max_length=max(len(r["input_ids"]) for r in rows),
            packing=True,
            packing_strategy="bfd",
            bf16=True,
            gradient_checkpointing=True,
            use_liger_kernel=liger,
            **trainer_args(out, steps, batch),
        )
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
        trainer.data_collator = meter.counting(trainer.data_collator)
        trainer.add_callback(meter.callback())
        trainer.train()
    return meter.result()


def worker(name: str) -> dict:
    """One check in this process; returns its row(s) as {label: {...}}."""
    import torch

    tok = tokenizer()
    attn = attention()
    if name.startswith("speed:"):
        which = name.split(":", 1)[1]
        rows = long_examples(tok, 8 * 12, 2048)  # 12 steps of 8 packed rows of <= 2048 tokens
        kwargs = dict(batch=8, steps=12, warmup=3, attn=attn)
        if which == "sft_exp":
            return train_sft_exp(rows, tok, memory="checkpointing", **kwargs)
        return train_trl(rows, tok, liger=which == "trl+liger", **kwargs)
    if name.startswith("memory:"):
        rows = long_examples(tok, 6, 16384)
        rows = [dict(r, input_ids=r["input_ids"]) for r in rows]
        return train_sft_exp(rows, tok, memory=name.split(":", 1)[1], batch=1, steps=6, warmup=2, attn=attn)
    raise SystemExit(f"unknown worker {name} (torch {torch.__version__})")


# ----------------------------------------------------------------------------- CLI runs (qlora, fsdp, deepspeed)
def cli_overrides(run_dir: Path, steps: int) -> list:
    # ++: the tiny model's init_config lacks some of these keys (rms_norm_eps); ++ adds or overrides
    shape = [f"++model.init_config.{k}={v}" for k, v in QWEN_0_5B.items() if k != "model_type"]
    return [
        *shape,
        "data.max_length=1024",
        "data.packing=true",
        f"trainer.max_steps={steps}",
        "trainer.logging_steps=1",
        "trainer.per_device_train_batch_size=4",
        "trainer.save_steps=1000",
        "trainer.precision=bf16",
        "logger=none",
        "evals=none",
        f"hydra.run.dir={run_dir}",
    ]


def run_cli(prefix: list, overrides: list, timeout: int) -> tuple[int, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [*prefix, "-m", "sft_exp", *overrides], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )
    return proc.returncode, proc.stderr[-2000:] + proc.stdout[-1000:]


def step_losses(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["loss"] for row in rows if "loss" in row and "eval_loss" not in row]


def check_sharded(strategy: str, timeout: int) -> dict:
    """distributed=<strategy> at world size 1 vs the plain run: the same per-step losses within bf16 tolerance."""
    steps = 4
    with tempfile.TemporaryDirectory() as tmp:
        plain, sharded = Path(tmp, "plain"), Path(tmp, strategy)
        rc, log = run_cli([sys.executable], cli_overrides(plain, steps), timeout // 2)
        if rc:
            return dict(ok=False, note=f"plain run failed: {log[-600:]}")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29533"]
        rc, log = run_cli(torchrun, [*cli_overrides(sharded, steps), f"distributed={strategy}"], timeout // 2)
        if rc:
            return dict(ok=False, note=f"{strategy} run failed: {log[-600:]}")
        a, b = step_losses(plain), step_losses(sharded)
        worst = max((abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b)), default=math.inf)
        ok = len(a) == len(b) == steps and worst <= BF16_LOSS_TOLERANCE
        return dict(
            ok=ok,
            note=f"losses plain {[round(x, 4) for x in a]} vs {[round(x, 4) for x in b]}; "
            f"worst relative difference {worst:.4f} (tolerance {BF16_LOSS_TOLERANCE})",
        )


def check_qlora(timeout: int) -> dict:
    """peft=qlora through the CLI on a saved random Qwen2.5-0.5B-shaped base (QLoRA needs a pretrained folder)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return dict(ok=None, note="bitsandbytes is not installed: `pip install bitsandbytes` to run this check")
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer()
        base = Path(tmp, "base")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**QWEN_0_5B, vocab_size=len(tok)), dtype=torch.bfloat16
        )
        model.save_pretrained(str(base))
        tok.save_pretrained(str(base))
        run_dir = Path(tmp, "run")
        overrides = [o for o in cli_overrides(run_dir, 6) if not o.startswith("++model.init_config")]
        started = time.perf_counter()
        rc, log = run_cli(
            [sys.executable], ["model=hf", f"model.name_or_path={base}", "peft=qlora", *overrides], timeout
        )
        if rc:
            return dict(ok=False, note=f"qlora run failed: {log[-600:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        losses = step_losses(run_dir)
        ok = summary.get("status") == "completed" and losses and all(math.isfinite(x) for x in losses)
        return dict(
            ok=ok,
            peak_gb=summary.get("cuda_peak_allocated_mb", math.nan) / 1024,
            note=f"{len(losses)} steps in {time.perf_counter() - started:.0f} s (with loading), "
            f"losses {[round(x, 3) for x in losses]}",
        )


# ----------------------------------------------------------------------------- driver
def run_worker(name: str, timeout: int) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    except subprocess.TimeoutExpired:
        return dict(ok=False, note=f"timed out after {timeout} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(ok=True, **json.loads(line[len("RESULT ") :]))
    return dict(ok=False, note=proc.stderr[-600:].replace("\n", " | "))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker)), flush=True)
        return 0
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device on this machine, so nothing was run. It needs one NVIDIA GPU "
            "(written for an H100/H200); run it there: python benchmarks/gpu_check.py"
        )
        return 0
    print(
        f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, attention {attention()}", flush=True
    )
    rows = []  # (check, variant, result)
    started = time.perf_counter()
    if "speed" in args.only:
        variants = ["sft_exp", "trl"]
        try:
            import liger_kernel  # noqa: F401

            variants.append("trl+liger")
        except ImportError:
            rows.append(("speed", "trl+liger", dict(ok=None, note="liger-kernel not installed: row skipped")))
        for v in variants:
            rows.append(("speed", v, run_worker(f"speed:{v}", LIMIT_S["speed"])))
    if "memory" in args.only:
        for v in ("checkpointing", "offload"):
            rows.append(("memory", v, run_worker(f"memory:{v}", LIMIT_S["memory"])))
    if "qlora" in args.only:
        rows.append(("qlora", "peft=qlora", check_qlora(LIMIT_S["qlora"])))
    for strategy in ("fsdp", "deepspeed"):
        if strategy in args.only:
            try:
                rows.append((strategy, f"distributed={strategy}", check_sharded(strategy, LIMIT_S[strategy])))
            except subprocess.TimeoutExpired:
                rows.append((strategy, f"distributed={strategy}", dict(ok=False, note="timed out")))
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def print_table(rows: list) -> None:
    speed = {v: r for c, v, r in rows if c == "speed" and r.get("ok")}
    memory = {v: r for c, v, r in rows if c == "memory" and r.get("ok")}
    print("\n| check | variant | ok | tokens/s | peak GB | vs reference | note |\n|---|---|---|---|---|---|---|")
    for check, variant, r in rows:
        reference = {"speed": speed.get("trl+liger") or speed.get("trl"), "memory": memory.get("checkpointing")}.get(
            check
        )
        versus = ""
        if r.get("ok") and reference and reference is not r:
            versus = (
                f"tok/s {r['tokens_per_s'] / reference['tokens_per_s']:.2f}x, "
                f"peak {r['peak_gb'] / reference['peak_gb']:.2f}x"
            )
        ok = {True: "yes", False: "NO", None: "skipped"}[r.get("ok")]
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        peak = f"{r['peak_gb']:.2f}" if isinstance(r.get("peak_gb"), float) else ""
        print(f"| {check} | {variant} | {ok} | {tps} | {peak} | {versus} | {r.get('note', '')} |")
    print(
        "(speed: reference = TRL with Liger when installed, else TRL; memory: reference = memory=checkpointing. "
        "Figures: sft_exp tok/s >= reference and peak <= it; offload peak <= 0.70x for tok/s >= 0.85x)"
    )


if __name__ == "__main__":
    sys.exit(main())
