"""Data preparation speed: sft_exp's prepare_datasets against TRL's SFTTrainer dataset preparation.

Both prepare the same 50,000 conversations (synthetic, 3 user/assistant exchanges each, or real
rows with --conversations) from the same JSONL file, with the same tokenizer (the embedded default:
ChatML with {% generation %} markers), assistant-only loss and the same max_length, each with a
fresh datasets cache, side by side in one run on this machine, each run in a fresh Python process.
Times include loading the JSONL file. Small runs (a few thousand rows) are dominated by start-up
costs; the figure is about 50,000.

    python benchmarks/bench_data.py [--rows 50000] [--num-proc 2] [--repeats 3] [--tokenizer PATH]
    python benchmarks/bench_data.py --memory --rows 100000,400000,1600000   # sft_exp alone: peak RSS vs rows
    python benchmarks/bench_data.py --contamination --rows 1000000 --repeats 2  # the contamination check's cost

It prints a speed-up only when both pipelines produced the same rows (token ids and labels, in any
order) in every run; otherwise it prints the mismatch and exits 1. `--memory` runs sft_exp alone at
each row count, each in a fresh process, and prints seconds, rows/s and peak RSS (ru_maxrss, and
its anonymous and file-backed parts) with their ratios against the smallest count; there the rows are
prepared as a run prepares them: 64 held out, and checked against them and the 1,319 GSM8K test problems
(`--check off`: data.decontamination.mode=off). `--contamination` prepares the same rows with the check
and without it, alternating, each in a fresh process: the check's share of data preparation, and what it
found (10 GSM8K test problems are planted among the synthetic rows; it must find those 10).
    python benchmarks/bench_data.py --conversations tests/assets/conversations/fastchat_dummy_conversation.sharegpt.json \
        --tokenizer tests/assets/tokenizers/phi-3-mini --chat-template chatml   # real rows and a real 32k tokenizer
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "tests" / "assets" / "eval" / "gsm8k_test.jsonl"  # the 1,319 test problems (MIT, tests/assets/README.md)
HELD_OUT_ROWS = 64
PLANTED = 10  # GSM8K test problems planted among the synthetic rows of the contamination runs

WORDS = ("cat dog bird tree moon sun river stone red blue green small large quick slow count sort reverse "
         "repeat first last word number letter apple bread water fire wind cloud rain snow").split()  # fmt: skip


def write_conversations(path: Path, n_rows: int, seed: int = 0, planted: int = 0) -> None:
    """Synthetic 3-exchange conversations; `planted` GSM8K test problems (question, worked answer) spread among them."""
    rng = random.Random(seed)
    problems = [json.loads(line) for line in GSM8K.read_text().splitlines()][::131][:planted]
    at = {round(i * n_rows / max(planted, 1)): problem for i, problem in enumerate(problems)}

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    with path.open("w") as out:
        for row in range(n_rows):
            if row in at:
                messages = [
                    {"role": "user", "content": at[row]["question"]},
                    {"role": "assistant", "content": at[row]["answer"]},
                ]
                out.write(json.dumps({"messages": messages}) + "\n")
                continue
            messages = []
            for _ in range(3):
                messages.append({"role": "user", "content": sentence(4, 20)})
                messages.append({"role": "assistant", "content": sentence(3, 30)})
            out.write(json.dumps({"messages": messages}) + "\n")


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def write_real_conversations(path: Path, n_rows: int, source: Path) -> None:
    """Rows of a real ShareGPT or `messages` file (JSON array or JSONL), repeated in order to `n_rows`."""
    text = source.read_text()
    records = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    rows = []
    for record in records:
        messages = record.get("messages") or [
            {"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]
        ]
        rows.append(json.dumps({"messages": messages}))
    with path.open("w") as out:
        for i in range(n_rows):
            out.write(rows[i % len(rows)] + "\n")


def rows_digest(dataset) -> str:
    """One hash of all rows' token ids and labels, whatever their order (sft_exp shuffles, TRL does not).

    Read 1,024 rows at a time: a whole column as Python lists would cost more memory than preparing it.
    """
    rows = []
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        for ids, row_labels in zip(batch["input_ids"], batch["labels"]):
            rows.append(
                hashlib.sha1(np.asarray(ids, np.int32).tobytes() + np.asarray(row_labels, np.int32).tobytes()).digest()
            )
    return hashlib.sha256(b"".join(sorted(rows))).hexdigest()[:16]


def time_sft_exp(path: Path, tokenizer, max_length: int, num_proc: int | None) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = _prepare(path, tokenizer, max_length, num_proc, cache)
        elapsed = time.perf_counter() - start
        digest = rows_digest(data.train)
    return elapsed, data.stats["supervised_tokens"], digest


def gsm8k_texts() -> list:
    """The gsm8k task of conf/evals/gsm8k.yaml over the whole test split, as a run hands it to the check."""
    from omegaconf import OmegaConf

    from sft_exp.evaluation.tasks import GenerationTask, GenerationTaskSettings
    from sft_exp.evaluation.texts import task_texts
    from sft_exp.paths import config_dir

    preset = OmegaConf.to_container(OmegaConf.load(config_dir() / "evals" / "gsm8k.yaml"))["gsm8k"]
    preset.update(path=str(GSM8K), limit=None)
    return task_texts(GenerationTask.build("gsm8k", GenerationTaskSettings(**preset)))


def _prepare(path: Path, tokenizer, max_length: int, num_proc: int | None, cache: str, check: str | None = None):
    """`check` None: every row trains (no held-out split), as in TRL, so both pipelines' rows can be compared.
    "on" / "off": 64 rows held out, and the contamination check against them and GSM8K's test split, or off."""
    from sft_exp.data import DataSettings, prepare_datasets

    split = (
        {"eval_split_size": 0}
        if check is None
        else {"eval_split_size": HELD_OUT_ROWS, "decontamination": {"mode": "report" if check == "on" else "off"}}
    )
    settings = DataSettings(sources=[{"path": str(path)}], max_length=max_length, assistant_only_loss=True,
                            num_proc=num_proc, seed=0, **split)  # fmt: skip
    texts = gsm8k_texts() if check == "on" else ()
    return prepare_datasets(settings, tokenizer, cache_dir=cache, eval_texts=texts)


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
        digest = rows_digest(prepared)
        supervised = sum(sum(label != -100 for label in row[1:]) for row in prepared["labels"])
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


class PeakMemory:
    """Peak resident memory of this process, split into anonymous (heap) and file-backed (mapped files)
    pages, sampled from /proc/self/status every 20 ms; ru_maxrss (the kernel's own peak) beside it."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)
            time.sleep(0.02)

    def __enter__(self):
        if os.path.exists("/proc/self/status"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @staticmethod
    def max_rss() -> int:
        """ru_maxrss of this process and of any worker processes it waited for (bytes; Linux reports KiB)."""
        return 1024 * max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _memory_one(path: Path, args) -> dict:
    """sft_exp alone on `path` in this (fresh) process: seconds, rows, peak RSS."""
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(asset_path("tokenizer")))
    with tempfile.TemporaryDirectory() as cache, PeakMemory() as memory:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        data = _prepare(path, tokenizer, args.max_length, args.num_proc, cache, args.check)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    found = data.stats["contamination"]
    return {"seconds": seconds, "cpu": cpu, "rows": data.stats["rows_read"], "train_rows": len(data.train),
            "max_rss": PeakMemory.max_rss(), "anon": memory.peak["RssAnon"], "file": memory.peak["RssFile"],
            "found": found.get("rows"), "checked": found.get("rows_checked"), "duplicates": found.get("duplicates")}  # fmt: skip


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of the workers it waited for: unlike wall time,
    it does not grow when other jobs share the cores."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def memory_scaling(sizes: list[int], args) -> int:
    """Peak memory and speed of sft_exp's preparation at each row count, each in a fresh process."""
    print(f"sft_exp prepare_datasets, synthetic 3-exchange conversations, max_length={args.max_length}, "
          f"num_proc={args.num_proc}, {HELD_OUT_ROWS} rows held out, contamination check {args.check} (GSM8K test "
          f"split + held-out rows); each row count in a fresh process; ratios against {sizes[0]:,} rows")  # fmt: skip
    print(f"{'rows':>10}{'seconds':>10}{'rows/s':>9}{'CPU s':>8}{'peak RSS MB':>13}{'anon MB':>9}{'file MB':>9}"
          f"{'rows/s ratio':>14}{'rows/CPU-s ratio':>18}{'RSS ratio':>11}")  # fmt: skip
    first = None
    for n_rows in sizes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "conversations.jsonl"
            write_conversations(path, n_rows, planted=PLANTED)
            result = _run_in_fresh_process("sft_exp", path, args, memory=True)
        if result["rows"] != n_rows:
            raise SystemExit(f"prepared {result['rows']} rows of {n_rows}")
        first = first or result
        speed, first_speed = n_rows / result["seconds"], first["rows"] / first["seconds"]
        per_cpu, first_per_cpu = n_rows / result["cpu"], first["rows"] / first["cpu"]
        print(f"{n_rows:>10}{result['seconds']:>10.1f}{speed:>9.0f}{result['cpu']:>8.0f}{result['max_rss'] / 2**20:>13.0f}"
              f"{result['anon'] / 2**20:>9.0f}{result['file'] / 2**20:>9.0f}{speed / first_speed:>13.2f}x"
              f"{per_cpu / first_per_cpu:>17.2f}x{result['max_rss'] / first['max_rss']:>10.2f}x", flush=True)  # fmt: skip
    return 0


def contamination_cost(n_rows: int, args) -> int:
    """Preparation of the same rows with the contamination check and without, alternating, fresh processes."""
    runs = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conversations.jsonl"
        write_conversations(path, n_rows, planted=PLANTED)
        for _ in range(args.repeats):
            for check in ("off", "on"):
                args.check = check
                runs[check].append(_run_in_fresh_process("sft_exp", path, args, memory=True))
                print(
                    f"  check {check}: {runs[check][-1]['seconds']:.1f} s, {runs[check][-1]['cpu']:.1f} CPU s, "
                    f"peak RSS {runs[check][-1]['max_rss'] / 2**20:.0f} MB",
                    flush=True,
                )
    median = {check: {key: statistics.median(r[key] for r in results) for key in ("seconds", "cpu", "max_rss")}
              for check, results in runs.items()}  # fmt: skip
    found = runs["on"][-1]
    print(
        f"\n{n_rows:,} synthetic 3-exchange conversations ({PLANTED} of them GSM8K test problems), {HELD_OUT_ROWS} held "
        f"out, checked against the 1,319 GSM8K test problems and the held-out rows; median of {args.repeats} run(s)"
    )
    print(f"{'':<26}{'seconds':>10}{'CPU s':>10}{'peak RSS MB':>13}")
    for check in ("off", "on"):
        m = median[check]
        print(f"{'check ' + check:<26}{m['seconds']:>10.1f}{m['cpu']:>10.1f}{m['max_rss'] / 2**20:>13.0f}")
    print(
        f"the check adds {100 * (median['on']['seconds'] / median['off']['seconds'] - 1):+.1f}% wall time, "
        f"{100 * (median['on']['cpu'] / median['off']['cpu'] - 1):+.1f}% CPU time, "
        f"{100 * (median['on']['max_rss'] / median['off']['max_rss'] - 1):+.1f}% peak RSS"
    )
    print(
        f"found: {found['found']} of {found['checked']:,} training rows match an eval text ({PLANTED} planted); "
        f"{found['duplicates']} exact duplicates"
    )
    return 0 if found["found"] == PLANTED else 1


def _run_in_fresh_process(pipeline: str, path: Path, args, memory: bool = False) -> dict:
    """Each pipeline runs in its own new interpreter: neither inherits the other's warm heap or caches."""
    command = [sys.executable, __file__, "--only", pipeline, "--data", str(path), "--max-length", str(args.max_length)]
    command += ["--memory", "--check", args.check] if memory else []
    command += ["--num-proc", str(args.num_proc)] if args.num_proc else []
    command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    command += ["--chat-template", args.chat_template] if args.chat_template else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {pipeline} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", default="50000", help="rows; with --memory, a comma-separated list like 100000,400000"
    )
    parser.add_argument("--memory", action="store_true",
                        help="sft_exp only: seconds, rows/s and peak RSS at each --rows, against the smallest")  # fmt: skip
    parser.add_argument(
        "--contamination",
        action="store_true",
        help="sft_exp only: preparation with the contamination check and without it, alternating",
    )
    parser.add_argument(
        "--check",
        choices=("on", "off"),
        default="on",
        help="with --memory: the contamination check on (as a run) or off",
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pipeline, alternating; the median counts")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: sft_exp/assets/tokenizer)")
    parser.add_argument("--chat-template", default=None, help="chatml, zephyr or a .jinja file with {%% generation %%}")
    parser.add_argument("--conversations", type=Path, default=None,
                        help="real ShareGPT or messages rows (JSON or JSONL), repeated to --rows (default: synthetic)")  # fmt: skip
    parser.add_argument("--only", choices=("sft_exp", "trl"), help=argparse.SUPPRESS)  # one timed run (internal)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        result = _memory_one(Path(args.data), args) if args.memory else _run_one(args.only, Path(args.data), args)
        print(json.dumps(result))
        return
    sizes = sorted(int(n) for n in args.rows.split(","))
    if args.memory:
        raise SystemExit(memory_scaling(sizes, args))
    if args.contamination:
        raise SystemExit(contamination_cost(sizes[-1], args))
    if len(sizes) > 1:
        raise SystemExit("--rows takes one row count without --memory")
    args.rows = sizes[0]

    times = {"sft_exp": [], "trl": []}
    supervised, rows = {"sft_exp": set(), "trl": set()}, {"sft_exp": set(), "trl": set()}
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
                supervised[pipeline].add(result["supervised"])
                rows[pipeline].add(result["rows"])
    ours, theirs = statistics.median(times["sft_exp"]), statistics.median(times["trl"])
    data = args.conversations.name if args.conversations else "synthetic, 3 exchanges each"
    print(f"\n{args.rows} conversations ({data}), max_length={args.max_length}, num_proc={args.num_proc}, "
          f"median of {args.repeats} run(s) each, every run in a fresh process")  # fmt: skip
    print(f"{'pipeline':<32}{'seconds':>10}{'rows/s':>10}{'trained tokens':>16}  runs")
    for name, pipeline in (("sft_exp prepare_datasets", "sft_exp"), ("TRL SFTTrainer._prepare_dataset", "trl")):
        seconds = statistics.median(times[pipeline])
        runs = " ".join(f"{t:.1f}" for t in times[pipeline])
        trained = "/".join(str(n) for n in sorted(supervised[pipeline]))
        print(f"{name:<32}{seconds:>10.2f}{args.rows / seconds:>10.0f}{trained:>16}  {runs}")
    check_same_rows(supervised, rows)
    print("same rows (token ids and labels, in any order): yes")
    print(f"speed-up (TRL time / sft_exp time): {theirs / ours:.2f}x")


def check_same_rows(supervised: dict[str, set], rows: dict[str, set]) -> None:
    """Exit 1, naming the mismatch, unless every run of both pipelines produced the same rows.

    `supervised` / `rows`: per pipeline, the trained-token counts / row hashes its runs produced.
    A speed-up between pipelines that prepared different rows would compare different work.
    """
    mismatch = [f"{pipeline}'s runs produced different {what}: {sorted(values[pipeline])}"
                for what, values in (("rows", rows), ("trained-token counts", supervised))
                for pipeline in values if len(values[pipeline]) > 1]  # fmt: skip
    if rows["sft_exp"] != rows["trl"]:
        mismatch.append(
            f"rows (hash of token ids and labels): sft_exp {sorted(rows['sft_exp'])}, TRL {sorted(rows['trl'])}"
        )
    if supervised["sft_exp"] != supervised["trl"]:
        mismatch.append(f"trained tokens: sft_exp {sorted(supervised['sft_exp'])}, TRL {sorted(supervised['trl'])}")
    if mismatch:
        raise SystemExit("same rows: NO, so no speed-up is printed (not a like-for-like comparison):\n  "
                         + "\n  ".join(mismatch))  # fmt: skip


if __name__ == "__main__":
    main()
