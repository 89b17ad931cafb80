"""The embedded default's assets: the shipped tokenizer, its chat template and the demo data."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from sft_exp.paths import asset_path

CONVERSATION = [
    {"role": "system", "content": "Reply with the digits sorted."},
    {"role": "user", "content": "4821"},
    {"role": "assistant", "content": "1248"},
    {"role": "user", "content": "Max of 907"},
    {"role": "assistant", "content": "9"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(asset_path("tokenizer"), local_files_only=True)


def read_rows(name: str) -> list:
    return [json.loads(line) for line in asset_path(f"demo/{name}.jsonl").read_text().splitlines()]


def user_prompts(rows: list) -> set:
    return {m["content"] for row in rows for m in row["messages"] if m["role"] == "user"}


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.is_fast
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id
    # Digits are single tokens, and plain text gets no special tokens added.
    assert tokenizer.convert_ids_to_tokens(tokenizer("4821")["input_ids"]) == ["4", "8", "2", "1"]


def test_assistant_mask_is_exact_on_two_turns_with_system(tokenizer):
    enc = tokenizer.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    # Built piece by piece: each piece is (text, trained?); "\n" always stands alone (pre-tokenizer).
    pieces = []
    for m in CONVERSATION:
        pieces += [("<|im_start|>" + m["role"], False), ("\n", False)]
        trained = m["role"] == "assistant"
        pieces += [(m["content"], trained), ("<|im_end|>", trained), ("\n", False)]
    ids, mask = [], []
    for text, trained in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [int(trained)] * len(piece_ids)
    assert enc["input_ids"] == ids
    assert enc["assistant_masks"] == mask
    # Exactly the assistant contents and their <|im_end|>: "1248" + end, "9" + end.
    trained_tokens = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tokenizer.decode(trained_tokens) == "1248<|im_end|>9<|im_end|>"


def test_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nReply with the digits sorted.<|im_end|>\n"
        "<|im_start|>user\n4821<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", ["train", "eval"])
def test_demo_rows_are_conversations(name):
    rows = read_rows(name)
    assert rows
    for index, row in enumerate(rows):
        roles = [m["role"] for m in row["messages"]]
        assert set(roles) <= {"system", "user", "assistant"}, (name, index)
        assert "assistant" in roles, (name, index)
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"]), (name, index)


def test_eval_prompts_are_held_out():
    assert not user_prompts(read_rows("train")) & user_prompts(read_rows("eval"))
