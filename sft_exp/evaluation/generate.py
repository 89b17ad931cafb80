"""Batched generation for task evaluation: left padding, the KV cache, stop at EOS or a stop string.

Prompts are padded on the left by hand (the tokenizer's padding side is never touched), sorted by
length so a batch wastes little on padding, and generated `batch_size` at a time. A generation that
reaches max_new_tokens without EOS or a stop string is returned whole, marked truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass
class Generation:
    text: str
    stopped: bool  # ended at EOS or a stop string
    truncated: bool  # cut at max_new_tokens
    num_tokens: int


def render_prompt(tokenizer, prompt) -> List[int]:
    """Conversational prompts through the chat template with a generation prompt; text as it is."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def stop_token_ids(model, tokenizer) -> List[int]:
    """Every EOS the model's generation config names, and the tokenizer's EOS.

    The loader put the trained template's end of turn into that config (models/stop_tokens.py), so
    task evaluation stops exactly where the saved model stops when it is served.
    """
    from sft_exp.models.stop_tokens import generation_stop_ids

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids.update(generation_stop_ids(model))
    return sorted(ids)


def model_context(model) -> Optional[int]:
    """The longest sequence the model takes (max_position_embeddings), when its config says."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) if config is not None else None


def _left_pad(batch: Sequence[List[int]], pad_id: int, device) -> tuple:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _finish(
    tokens: List[int], tokenizer, eos_ids: set, stop: Sequence[str], max_new_tokens: int, pad_id: int
) -> Generation:
    """Cut one row's new tokens at EOS or the earliest stop string; otherwise it ran to max_new_tokens."""
    while pad_id not in eos_ids and tokens and tokens[-1] == pad_id:  # a row that stopped early, padded
        tokens = tokens[:-1]
    end = next((i for i, token in enumerate(tokens) if token in eos_ids), None)
    if end is not None:
        return Generation(tokenizer.decode(tokens[:end], skip_special_tokens=True), True, False, end)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s and s in text]
    if cuts:
        return Generation(text[: min(cuts)], True, False, len(tokens))
    return Generation(text, False, len(tokens) >= max_new_tokens, len(tokens))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[List[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    do_sample: bool = False,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    synced_gpus: bool = False,
) -> List[List[Generation]]:
    """`num_samples` generations per tokenized prompt, in the prompts' order."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_token_ids(model, tokenizer)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    if not do_sample:  # a model's generation_config may set sampling values that greedy decoding warns about
        sampling.update(temperature=None, top_p=None, top_k=None)
    stops = dict(stop_strings=list(stop), tokenizer=tokenizer) if stop else {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths batch together
    results: List[Optional[List[Generation]]] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = _left_pad([prompts[i] for i in chunk], pad_id, device)
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, use_cache=True,
            num_return_sequences=num_samples, pad_token_id=pad_id, eos_token_id=eos_ids, synced_gpus=synced_gpus,
            **sampling, **stops,
        )  # fmt: skip
        new_tokens = out[:, input_ids.shape[1] :].tolist()
        for row, index in enumerate(chunk):
            rows = new_tokens[row * num_samples : (row + 1) * num_samples]
            results[index] = [_finish(tokens, tokenizer, set(eos_ids), stop, max_new_tokens, pad_id) for tokens in rows]
    return results
