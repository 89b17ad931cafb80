"""A few greedy generations from held-out prompts after training: the quickest sanity check a person has."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def render_prompt(tokenizer, prompt) -> list[int]:
    """Conversational prompts go through the chat template with a generation prompt; text goes as is."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


@torch.no_grad()
def generate_samples(model, tokenizer, samples: Sequence[dict], max_new_tokens: int = 48) -> list[dict]:
    """Greedy continuation of each sample's prompt; returns prompt, reference and generated text."""
    model.eval()
    device = next(model.parameters()).device
    results = []
    for sample in samples:
        ids = render_prompt(tokenizer, sample["prompt"])
        input_ids = torch.tensor([ids], device=device)
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        generated = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        results.append({
            "prompt": sample["prompt"] if isinstance(sample["prompt"], str) else sample["prompt"][-1]["content"],
            "reference": sample.get("reference"),
            "generated": generated,
        })
    return results


def save_and_print_samples(results: list[dict], run_dir: Path) -> None:
    with (run_dir / "samples.jsonl").open("w") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")
    for row in results:
        match = "ok " if row["reference"] is not None and row["generated"].strip() == str(row["reference"]).strip() else "   "
        log.info("sample %s| %r -> %r (reference %r)", match, row["prompt"], row["generated"], row["reference"])
