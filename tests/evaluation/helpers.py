"""Helpers of the evaluation tests (`from tests.evaluation.helpers import ...`): a tiny model built from config
and the tokenizer shipped with the package (nothing from a hub), JSONL files, the demo's held-out file."""

from __future__ import annotations

import json

import torch

from sft_exp.paths import asset_path


def tiny_model(tokenizer, max_positions: int = 512, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        initializer_range=0.5,  # peaked logits: greedy choices are not near-ties
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def demo_eval_file() -> str:
    return str(asset_path("demo/eval.jsonl"))
