"""Assistant-only masks on SmolLM2-135M-Instruct's own chat template (ChatML with a default system prompt,
no {% generation %} markers), checked token by token against masks computed by hand from the rendered text."""

from __future__ import annotations

import json

import pytest

from sft_exp.data import DataSettings, prepare_datasets

pytestmark = pytest.mark.real_model

CONVERSATIONS = [
    [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, since 1871."},
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Opposite of hot?"},
        {"role": "assistant", "content": "Cold"},
    ],
]


def expected_trained(tokenizer, messages) -> tuple[list[int], list[bool]]:
    """Tokens of the rendered conversation and, for each, whether it lies inside an assistant reply or its
    <|im_end|> (the "\\n" after it and every header are not trained): found in the text, not from sft_exp."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, pos = [], 0
    for message in messages:
        header = f"<|im_start|>{message['role']}\n"
        start = text.index(header + message["content"] + "<|im_end|>", pos) + len(header)
        pos = start + len(message["content"]) + len("<|im_end|>")
        if message["role"] == "assistant":
            spans.append((start, pos))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(a <= s and e <= b for a, b in spans) for s, e in enc["offset_mapping"]]
    return enc["input_ids"], trained


def test_assistant_only_masks_match_the_rendered_text_token_by_token(smollm2_tokenizer, tmp_path):
    tokenizer = smollm2_tokenizer
    assert "% generation %" not in tokenizer.chat_template  # masked by rendering turn by turn, not by markers
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    settings = DataSettings(sources=[{"path": str(path)}], assistant_only_loss=True, eval_split_size=0, seed=0)
    data = prepare_datasets(settings, tokenizer, cache_dir=str(tmp_path / "cache"))
    rows = {tuple(r["input_ids"]): r["labels"] for r in data.train}
    assert len(rows) == len(CONVERSATIONS)
    for messages in CONVERSATIONS:
        ids, trained = expected_trained(tokenizer, messages)
        assert tuple(ids) in rows, tokenizer.decode(ids)
        labels = rows[tuple(ids)]
        got = [label != -100 for label in labels]
        for i, (token, want, have) in enumerate(zip(ids, trained, got)):
            assert want == have, f"token {i} {tokenizer.decode([token])!r}: expected trained={want}"
        assert [label for label in labels if label != -100] == [t for t, w in zip(ids, trained) if w]
        replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert tokenizer.decode([t for t, w in zip(ids, trained) if w]) == "".join(replies)
