"""Long conversations for the sequence-parallel tests: the demo's short conversations chained into multi-turn
rows of a chosen token length, some assistant turns weighted (per-message loss weights), in two sources.

Built at test time from the shipped demo data and tokenizer (sft_exp/assets), so nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# A tiny Llama built from config (4 heads, 2 key/value heads) with room for 4k-token rows.
LLAMA = (
    "model.init_config={model_type:llama,hidden_size:64,intermediate_size:128,num_hidden_layers:2,"
    "num_attention_heads:4,num_key_value_heads:2,max_position_embeddings:4096,tie_word_embeddings:false,"
    "rope_theta:10000.0}"
)


def _turns():
    from sft_exp.paths import asset_path

    for line in asset_path("demo/train.jsonl").read_text().splitlines():
        yield [m for m in json.loads(line)["messages"] if m["role"] != "system"]


def long_conversations(count: int, lengths: tuple[int, int], seed: int) -> list[dict]:
    """`count` conversations of between lengths[0] and lengths[1] tokens (demo template and tokenizer).

    Every 5th assistant turn has weight 2 (counts twice), every 7th weight 0 (not trained)."""
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")), model_max_length=1 << 20)
    rng = random.Random(seed)
    pool = list(_turns())
    rng.shuffle(pool)
    rows, turn = [], 0
    for _ in range(count):
        target, messages, length = rng.randint(*lengths), [], 0
        while True:  # the demo template renders each message on its own: lengths add up
            extra = pool.pop()
            length += len(tokenizer.apply_chat_template(extra, tokenize=True)["input_ids"])
            if length > lengths[1] or (messages and length > target):
                break
            for message in extra:
                if message["role"] == "assistant":
                    turn += 1
                    weight = 2.0 if turn % 5 == 0 else 0.0 if turn % 7 == 0 else None
                    message = {**message, "weight": weight} if weight is not None else message
                messages.append(message)
        rows.append({"messages": messages})
    return rows


def write_sources(folder: Path, lengths: tuple[int, int] = (512, 2048)) -> list[str]:
    """Two sources of long rows (train and held-out files each): the `data.sources=...` override."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for index, name in enumerate(("long_a", "long_b")):
        for split, count in (("train", 24), ("eval", 4)):
            rows = long_conversations(count, lengths, seed=10 * index + (split == "eval"))
            (folder / f"{name}_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        sources.append(f"{{path:{folder}/{name}_train.jsonl,name:{name},eval_path:{folder}/{name}_eval.jsonl}}")
    return [f"data.sources=[{','.join(sources)}]", f"data.max_length={lengths[1]}", "data.assistant_only_loss=true"]
