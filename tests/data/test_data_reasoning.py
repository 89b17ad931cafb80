"""Reasoning turns: trained as the template renders them at that turn, or masked by data.train_reasoning=false."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data import prepare_datasets
from sft_exp.errors import DataError
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl

QWEN3 = json.loads(
    (Path(__file__).resolve().parents[1] / "assets/chat_templates/qwen3_tokenizer_config.json").read_text()
)["chat_template"]


def _trained(tmp_path, rows, template="chatml", **values) -> list[list[str]]:
    tokenizer = make_word_tokenizer(QWEN3 if template == "qwen3" else None)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    data = prepare_datasets(
        settings(
            sources=[{"path": str(path)}],
            assistant_only_loss=True,
            chat_template=None if template == "qwen3" else template,
            **values,
        ),
        tokenizer,
    )
    return [_runs(tokenizer, row) for row in data.train]


def _runs(tokenizer, row) -> list[str]:
    """Runs of consecutive trained tokens, as the exact text of their tokens."""
    runs, current = [], ""
    for token, label in zip(row["input_ids"] + [None], row["labels"] + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            current += tokenizer.convert_ids_to_tokens(token)
        elif current:
            runs, current = runs + [current], ""
    return runs


def _thinking(*, in_content: bool) -> dict:
    row = conversation("What is two plus two ?", "Four .", "And three ?", "Six .")
    for message, thought in ((row["messages"][1], "two and two"), (row["messages"][3], "three and three")):
        if in_content:
            message["content"] = f"<think>{thought}</think>{message['content']}"
        else:
            message["reasoning_content"] = thought
    return row


@pytest.mark.parametrize("in_content", [False, True])
def test_qwen3_without_splitting_trains_only_the_turn_it_renders_with_its_reasoning(tmp_path, in_content):
    """Qwen3 drops the first turn's reasoning when it renders the whole conversation: that rendering is
    never what the model sees when it writes the first turn, so unsplit only the last turn (as rendered) is trained."""
    (runs,) = _trained(tmp_path, [_thinking(in_content=in_content)], template="qwen3", split_reasoning_turns=False)
    assert runs == ["<think>\nthree and three\n</think>\n\nSix .<|im_end|>"]


def test_train_reasoning_false_masks_the_think_block(tmp_path):
    first, last = _trained(tmp_path, [_thinking(in_content=False)], template="qwen3", train_reasoning=False)
    assert (first, last) == (["Four .<|im_end|>"], ["Six .<|im_end|>"])


def test_think_blocks_in_content_are_trained_or_masked_on_a_plain_template(tmp_path):
    row = _thinking(in_content=True)
    assert _trained(tmp_path, [row]) == [
        ["<think>two and two</think>Four .<|im_end|>", "<think>three and three</think>Six .<|im_end|>"]
    ]
    assert _trained(tmp_path, [row], train_reasoning=False) == [["Four .<|im_end|>", "Six .<|im_end|>"]]


def test_reasoning_content_on_a_template_that_cannot_render_it_is_an_error(tmp_path):
    with pytest.raises(
        DataError,
        match=r"train.jsonl, row 0: messages\[1\] has a reasoning_content, but the chat template "
        r"renders no message's reasoning",
    ):
        _trained(tmp_path, [_thinking(in_content=False)], template="chatml")
