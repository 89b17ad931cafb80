"""Reasoning on real files: GSM8K's worked solutions as the reasoning of two-turn conversations, the real
phi-3-mini tokenizer, and the real Qwen3 and SmolLM3 templates (all shipped in tests/assets).

Qwen3 drops the reasoning of every turn before the last user message, so each turn trains in an example of
its own, rendered as the model sees it when it writes that turn. SmolLM3 renders `<think>` blocks in content
as they are: one example per row, and `train_reasoning=false` masks the block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data import prepare_datasets
from tests.data.builders import settings, write_jsonl

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PROBLEMS = [json.loads(line) for line in (ASSETS / "eval/gsm8k_test_first50.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ASSETS / "tokenizers" / "phi-3-mini"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    return tokenizer


def _turn(problem: dict, reasoning_in_content: bool) -> list[dict]:
    work, answer = problem["answer"].split("\n#### ")
    if reasoning_in_content:
        reply = {"role": "assistant", "content": f"<think>\n{work}\n</think>\nThe answer is {answer}."}
    else:
        reply = {"role": "assistant", "reasoning_content": work, "content": f"The answer is {answer}."}
    return [{"role": "user", "content": problem["question"]}, reply]


def _rows(reasoning_in_content: bool) -> list[dict]:
    pairs = zip(PROBLEMS[::2], PROBLEMS[1::2])
    return [{"messages": _turn(a, reasoning_in_content) + _turn(b, reasoning_in_content)} for a, b in pairs]


def _prepare(tmp_path, tokenizer, template: str, rows: list, **values):
    tokenizer.chat_template = template
    path = write_jsonl(tmp_path / "gsm8k_reasoning.jsonl", rows)
    values = {"sources": [{"path": str(path)}], "assistant_only_loss": True, "max_length": 2048, **values}
    return prepare_datasets(settings(**values), tokenizer)


def _supervised(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])


def test_qwen3_trains_each_turn_of_real_rows_as_rendered_at_that_turn(tmp_path, tokenizer):
    template = json.loads((ASSETS / "chat_templates/qwen3_tokenizer_config.json").read_text())["chat_template"]
    rows = _rows(reasoning_in_content=False)
    data = _prepare(tmp_path, tokenizer, template, rows)
    source = data.stats["sources"]["gsm8k_reasoning"]
    assert (source["rows_read"], source["rows_kept"], source["examples_kept"]) == (25, 25, 50), source
    assert not source["rows_dropped"] and source["rows_truncated"] == 0
    for example in data.train:
        (row,) = set(example["example_ids"])
        messages = rows[row]["messages"]
        text = tokenizer.decode(example["input_ids"])
        (k,) = [k for k in (2, 4) if tokenizer.apply_chat_template(messages[:k], tokenize=False) == text]
        reply = messages[k - 1]  # the one turn this example trains: its reasoning, its answer, its end of turn
        assert (
            _supervised(tokenizer, example)
            == f"<think>\n{reply['reasoning_content']}\n</think>\n\n{reply['content']}<|im_end|>"
        )


def test_smollm3_trains_think_blocks_in_content_or_masks_them(tmp_path, tokenizer):
    template = (ASSETS / "chat_templates/smollm3_chat_template.jinja").read_text()
    rows = _rows(reasoning_in_content=True)
    trained = _prepare(tmp_path, tokenizer, template, rows)
    masked = _prepare(tmp_path, tokenizer, template, rows, train_reasoning=False)
    assert len(trained.train) == len(masked.train) == 25 and trained.stats["rows_split"] == 0
    for with_think, without in zip(trained.train, masked.train):
        (row,) = set(with_think["example_ids"])
        replies = [m["content"] for m in rows[row]["messages"][1::2]]
        # SmolLM3's generation block holds the turn's header too (what TRL's assistant mask trains as well).
        assert _supervised(tokenizer, with_think) == "".join(f"<|im_start|>assistant\n{r}<|im_end|>" for r in replies)
        answers = [r[r.index("</think>\n") + len("</think>\n") :] for r in replies]
        # Masked: the block and the blank either side of it (a span's trailing whitespace is never trained).
        assert _supervised(tokenizer, without) == "".join(f"<|im_start|>assistant{a}<|im_end|>" for a in answers)
        assert with_think["input_ids"] == without["input_ids"]  # the same text, only the labels differ
