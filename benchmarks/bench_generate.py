"""Task-evaluation generation speed: batched (left padding, KV cache) against one prompt at a time.

The embedded default's tiny model (conf/model/tiny.yaml, built from config, random weights) and
the 64 demo held-out prompts (sft_exp/assets/demo/eval.jsonl), greedy, max_new_tokens tokens each,
through the same sft_exp.evaluation.generate, side by side in one process, alternating, so machine
load hits both alike. A random model rarely says EOS, so nearly every generation runs the full
max_new_tokens: the comparison is of equal work. The outputs of both must be the same.

    python benchmarks/bench_generate.py [--prompts 64] [--max-new-tokens 32] [--batch-size 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build(prompts: int):
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sft_exp.evaluation.generate import render_prompt
    from sft_exp.evaluation.tasks import load_examples, task_settings
    from sft_exp.paths import asset_path, config_dir

    tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
    fields = dict(OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "tiny.yaml"))["init_config"])
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=len(tokenizer), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    examples = load_examples(
        "demo", task_settings("demo", {"path": str(asset_path("demo/eval.jsonl")), "limit": prompts})
    )
    return model, tokenizer, [render_prompt(tokenizer, e["prompt"]) for e in examples]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    import torch

    from sft_exp.evaluation.generate import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, prompts = build(args.prompts)
    run = {"batched": args.batch_size, "one at a time": 1}
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    times, outputs = {name: [] for name in run}, {}
    for _ in range(args.repeats):
        for name, batch_size in run.items():
            start = time.perf_counter()
            result = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
            times[name].append(time.perf_counter() - start)
            outputs[name] = [g[0].text for g in result]
    tokens = sum(g[0].num_tokens for g in result)
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["one at a time"]))
    print(
        f"{len(prompts)} prompts, {tokens} generated tokens per pass, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    for name in run:
        median = statistics.median(times[name])
        print(
            f"  {name:14s} {median:8.2f} s  {tokens / median:9.0f} tokens/s  (runs: {', '.join(f'{t:.2f}' for t in times[name])})"
        )
    ratio = statistics.median(times["one at a time"]) / statistics.median(times["batched"])
    print(f"batched is {ratio:.1f}x faster than one prompt at a time; outputs identical: {same}/{len(prompts)}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
