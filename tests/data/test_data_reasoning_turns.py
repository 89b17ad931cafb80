"""Templates that drop earlier turns' reasoning: each such turn trains in an example of its own, the
conversation up to it as the template renders it there (what the model sees when it writes the turn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data import prepare_datasets
from sft_exp.data.statistics import describe
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl

QWEN3 = json.loads(
    (Path(__file__).resolve().parents[1] / "assets/chat_templates/qwen3_tokenizer_config.json").read_text()
)["chat_template"]
# Qwen3-style, small: an assistant turn's reasoning is rendered only after the last user message.
DROPS = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and m.reasoning_content and loop.index0 > ns.last %}"
    "<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
KEEPS = DROPS.replace(" and loop.index0 > ns.last", "")  # the same template, keeping every turn's reasoning


def _row() -> dict:
    row = conversation("What is two plus two ?", "Four .", "And three ?", "Six .")
    row["messages"][1]["reasoning_content"] = "two and two"
    row["messages"][3]["reasoning_content"] = "three and three"
    return row


def _prepare(tmp_path, template: str, rows=None, **values):
    tokenizer = make_word_tokenizer(template)
    path = write_jsonl(tmp_path / "train.jsonl", rows or [_row()])
    data = prepare_datasets(settings(sources=[{"path": str(path)}], assistant_only_loss=True, **values), tokenizer)
    return tokenizer, data


def _supervised(tokenizer, example) -> str:
    return "".join(
        tokenizer.convert_ids_to_tokens(t)
        for t, label in zip(example["input_ids"], example["labels"])
        if label != IGNORE_INDEX
    )


def _text(tokenizer, example) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(example["input_ids"]))


@pytest.mark.parametrize("template", [DROPS, QWEN3], ids=["small", "qwen3"])
def test_each_turn_trains_as_rendered_at_that_turn(tmp_path, template):
    tokenizer, data = _prepare(tmp_path, template)
    assert len(data.train) == 2
    messages = _row()["messages"]
    by_length = sorted(data.train, key=lambda example: len(example["input_ids"]))
    for example, (k, reasoning, answer) in zip(
        by_length, [(2, "two and two", "Four ."), (4, "three and three", "Six .")]
    ):
        rendered = tokenizer.apply_chat_template(messages[:k], tokenize=False)
        assert _text(tokenizer, example) == rendered  # the render at turn k, not the whole conversation's
        trained = _supervised(tokenizer, example)
        assert trained.startswith("<think>") and reasoning in trained and trained.endswith(answer + "<|im_end|>")
        turn = rendered[rendered.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n") :]
        assert trained == turn.rstrip()  # exactly that turn's reasoning + answer + end of turn
        assert set(example["example_ids"]) == {0}  # both examples name their source row
    assert (data.stats["rows_split"], data.stats["split_examples"]) == (1, 2)
    source = data.stats["sources"]["train"]  # one row read, that row kept, as two examples
    assert (source["rows_read"], source["rows_kept"], source["examples_kept"]) == (1, 1, 2), source
    assert "1 rows expanded into 2 per-turn examples" in describe(data)


def test_a_template_that_keeps_reasoning_gives_one_example(tmp_path):
    tokenizer, data = _prepare(tmp_path, KEEPS)
    (example,) = data.train
    assert (
        _supervised(tokenizer, example)
        == "<think>two and two</think>Four .<|im_end|><think>three and three</think>Six .<|im_end|>"
    )
    assert data.stats["rows_split"] == 0 and "expanded" not in describe(data)


def test_split_turns_keep_the_row_weights_and_settings(tmp_path):
    row = _row()
    row["messages"][1]["weight"] = 2.0
    tokenizer, data = _prepare(tmp_path, DROPS, rows=[conversation("Hi", "Hello"), row], train_reasoning=False)
    assert len(data.train) == 3 and data.stats["rows_split"] == 1
    split = sorted((e for e in data.train if set(e["example_ids"]) == {1}), key=lambda e: len(e["input_ids"]))
    first, whole = split
    assert _supervised(tokenizer, first) == "Four .<|im_end|>"  # reasoning masked (train_reasoning=false)
    assert {w for w in first["loss_weights"] if w} == {2.0}
    # The whole conversation: the first turn masked (it is trained in its own example).
    assert _supervised(tokenizer, whole) == "Six .<|im_end|>"


def test_split_reasoning_turns_false_masks_the_dropped_turn(tmp_path):
    tokenizer, data = _prepare(tmp_path, DROPS, split_reasoning_turns=False)
    (example,) = data.train
    assert _supervised(tokenizer, example) == "<think>three and three</think>Six .<|im_end|>"


@pytest.mark.parametrize("template", [DROPS, QWEN3], ids=["small", "qwen3"])
def test_train_on_eot_all_finds_every_end_of_turn_where_earlier_reasoning_is_dropped(tmp_path, template):
    # The render up to a user message ends with the previous assistant turn and so shows its reasoning; the
    # conversation drops it there. The user turn is found in the render that ends with it (which agrees).
    tokenizer, data = _prepare(tmp_path, template, train_on_eot="all")
    first, whole = sorted(data.train, key=lambda example: len(example["input_ids"]))
    assert _supervised(tokenizer, first).endswith("Four .<|im_end|>")  # its own example: only that turn
    trained = _supervised(tokenizer, whole)
    # both users' and the first (dropped, masked) turn's end of turn, then the last turn whole
    assert trained.startswith("<|im_end|>" * 3 + "<think>") and trained.endswith("Six .<|im_end|>"), trained
    assert "Four" not in trained
