"""Prove the demo tasks are learnable on a CPU in the default run's time budget.

    python -m sft_exp.assets.check_learnable [--steps 1500 --lr 2e-3 --seed 1 ...]

A bare torch loop (no Trainer) on the shipped tokenizer and demo files: a tiny Qwen2 model in
fp32 on 2 threads, AdamW, loss on assistant tokens only. It prints the held-out token accuracy
over assistant tokens (the prediction at t-1 equals the label at t) before and after training,
and the training seconds. The defaults are the values conf/model/tiny.yaml and the default
trainer settings should use; exit status 1 if accuracy or time misses the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import List, Tuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from sft_exp.constants import IGNORE_INDEX as IGNORE

ASSETS_DIR = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", default="linear", help="transformers lr_scheduler_type, as trainer.lr_scheduler_type")
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-acc", type=float, default=0.85)
    p.add_argument("--max-train-s", type=float, default=100.0)
    return p.parse_args(argv)


def load_examples(tokenizer, path: Path, max_length: int) -> List[Tuple[List[int], List[int]]]:
    """(input_ids, labels) per row; labels keep assistant tokens (content + <|im_end|>) only."""
    examples = []
    for line in path.read_text().splitlines():
        enc = tokenizer.apply_chat_template(
            json.loads(line)["messages"], return_assistant_tokens_mask=True, return_dict=True
        )
        ids = enc["input_ids"][:max_length]
        labels = [t if m else IGNORE for t, m in zip(ids, enc["assistant_masks"][:max_length])]
        examples.append((ids, labels))
    return examples


def collate(batch, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids_row, labels_row) in enumerate(batch):
        ids[row, : len(ids_row)] = torch.tensor(ids_row)
        labels[row, : len(labels_row)] = torch.tensor(labels_row)
        mask[row, : len(ids_row)] = 1
    return ids, labels, mask


def shifted_loss_and_hits(model, ids, labels, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    supervised = target != IGNORE
    loss = torch.nn.functional.cross_entropy(logits[supervised], target[supervised])
    hits = (logits[supervised].argmax(-1) == target[supervised]).sum().item()
    return loss, hits, supervised.sum().item()


@torch.no_grad()
def eval_accuracy(model, examples, pad_id: int, batch_size: int = 64) -> float:
    model.eval()
    hits = total = 0
    for start in range(0, len(examples), batch_size):
        _, h, n = shifted_loss_and_hits(model, *collate(examples[start : start + batch_size], pad_id))
        hits, total = hits + h, total + n
    model.train()
    return hits / total


def build_model(args, tokenizer):
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def make_scheduler(optimizer, args):
    """The Trainer's own schedule: transformers.get_scheduler with warmup as TrainingArguments counts it."""
    from transformers import get_scheduler

    warmup = math.ceil(args.warmup_ratio * args.steps)  # TrainingArguments.get_warmup_steps for a ratio < 1
    return get_scheduler(args.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=args.steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(ASSETS_DIR / "tokenizer")
    train = load_examples(tokenizer, ASSETS_DIR / "demo" / "train.jsonl", args.max_length)
    evals = load_examples(tokenizer, ASSETS_DIR / "demo" / "eval.jsonl", args.max_length)
    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, {len(train)} train / {len(evals)} eval rows")

    before = eval_accuracy(model, evals, tokenizer.pad_token_id)
    print(f"eval accuracy before: {before:.3f}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, args)
    order: List[int] = []
    start = time.perf_counter()
    for step in range(args.steps):
        if len(order) < args.batch:  # reshuffle per epoch; a partial tail rolls into the next
            order += rng.sample(range(len(train)), len(train))
        batch, order = [train[i] for i in order[: args.batch]], order[args.batch :]
        loss, hits, n = shifted_loss_and_hits(model, *collate(batch, tokenizer.pad_token_id))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  acc {hits / n:.3f}  {time.perf_counter() - start:5.1f}s")
    train_s = time.perf_counter() - start

    after = eval_accuracy(model, evals, tokenizer.pad_token_id)
    print(f"eval accuracy after: {after:.3f}   training: {train_s:.1f}s for {args.steps} steps")
    ok = before < 0.3 and after >= args.target_acc and train_s <= args.max_train_s
    print("OK" if ok else f"MISSED: want before < 0.3, after >= {args.target_acc}, training <= {args.max_train_s}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
