"""Per-message `weight` / `train` and the per-run turn settings, through prepare_datasets on real templates."""

from __future__ import annotations

import pytest

from sft_exp.data import prepare_datasets
from sft_exp.errors import ConfigError, DataError
from tests.data.builders import conversation, settings, supervised_tokens, write_jsonl


def _prepare(tokenizer, tmp_path, rows, source=None, **values):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    values = {"chat_template": "chatml", "assistant_only_loss": True, **values}
    return prepare_datasets(
        settings(sources=[{"path": str(path), "name": "chat", **(source or {})}], **values), tokenizer
    )


def _weighted_tokens(tokenizer, row) -> list[tuple[str, float]]:
    return [
        (tokenizer.convert_ids_to_tokens(t), w)
        for t, label, w in zip(row["input_ids"], row["labels"], row["loss_weights"])
        if label != -100
    ]


def _two_turns(second: dict | None = None, first: dict | None = None) -> dict:
    row = conversation("What is two plus two ?", "Four .", "And three ?", "Six .")
    row["messages"][1].update(first or {})
    row["messages"][3].update(second or {})
    return row


def test_without_weights_every_trained_token_weighs_one(word_tokenizer, tmp_path):
    row = _prepare(word_tokenizer, tmp_path, [_two_turns()]).train[0]
    assert [w for _, w in _weighted_tokens(word_tokenizer, row)] == [1.0] * 8
    assert all(w == 0 for w, label in zip(row["loss_weights"], row["labels"]) if label == -100)


def test_a_message_weight_weighs_its_tokens_and_its_end_of_turn(word_tokenizer, tmp_path):
    row = _prepare(word_tokenizer, tmp_path, [_two_turns({"weight": 2})]).train[0]
    assert _weighted_tokens(word_tokenizer, row) == [
        ("Four", 1.0),
        (" ", 1.0),
        (".", 1.0),
        ("<|im_end|>", 1.0),
        ("Six", 2.0),
        (" ", 2.0),
        (".", 2.0),
        ("<|im_end|>", 2.0),
    ]


def test_weight_zero_and_train_false_leave_the_message_untrained(word_tokenizer, tmp_path):
    rows = [_two_turns({"weight": 0}), _two_turns({"train": False})]
    data = _prepare(word_tokenizer, tmp_path, rows)
    for row in data.train:
        assert supervised_tokens(word_tokenizer, row) == ["Four", " ", ".", "<|im_end|>"]


def test_sharegpt_turns_with_mapped_weight_and_train_names(word_tokenizer, tmp_path):
    row = {"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello", "loss": False},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye", "loss_scale": 0.5},
    ]}  # fmt: skip
    data = _prepare(
        word_tokenizer, tmp_path, [row], source={"columns": {"weight_tag": "loss_scale", "train_tag": "loss"}}
    )
    assert _weighted_tokens(word_tokenizer, data.train[0]) == [("Bye", 0.5), ("<|im_end|>", 0.5)]


def test_train_true_on_a_user_message_trains_its_content_and_end_of_turn(word_tokenizer, tmp_path):
    row = _two_turns()
    row["messages"][2]["train"] = True
    trained = supervised_tokens(word_tokenizer, _prepare(word_tokenizer, tmp_path, [row]).train[0])
    assert trained == [
        "Four",
        " ",
        ".",
        "<|im_end|>",
        "And",
        " ",
        "three",
        " ",
        "?",
        "<|im_end|>",
        "Six",
        " ",
        ".",
        "<|im_end|>",
    ]


def test_roles_to_train_user_trains_every_user_turn(word_tokenizer, tmp_path):
    data = _prepare(word_tokenizer, tmp_path, [_two_turns()], roles_to_train=["user"])
    trained = supervised_tokens(word_tokenizer, data.train[0])
    assert trained == ["What", " ", "is", " ", "two", " ", "plus", " ", "two", " ", "?", "<|im_end|>",
                       "And", " ", "three", " ", "?", "<|im_end|>"]  # fmt: skip


@pytest.mark.parametrize("policy, expected", [
    ("turn", ["Four", " ", ".", "<|im_end|>", "Six", " ", ".", "<|im_end|>"]),
    ("none", ["Four", " ", ".", "Six", " ", "."]),
    ("last", ["Four", " ", ".", "Six", " ", ".", "<|im_end|>"]),
    ("all", ["<|im_end|>", "Four", " ", ".", "<|im_end|>", "<|im_end|>", "Six", " ", ".", "<|im_end|>"]),
])  # fmt: skip
def test_train_on_eot(word_tokenizer, tmp_path, policy, expected):
    data = _prepare(word_tokenizer, tmp_path, [_two_turns()], train_on_eot=policy)
    assert supervised_tokens(word_tokenizer, data.train[0]) == expected


def test_last_turn_only_trains_the_last_assistant_turn(word_tokenizer, tmp_path):
    data = _prepare(word_tokenizer, tmp_path, [_two_turns()], last_turn_only=True)
    assert supervised_tokens(word_tokenizer, data.train[0]) == ["Six", " ", ".", "<|im_end|>"]


def test_the_prefix_path_finds_the_same_turns_as_generation_markers(word_tokenizer, tmp_path):
    """A template without {% generation %} (found by prefix renders) gives the same weighted tokens."""
    from sft_exp.data.templates import CHATML

    plain = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert plain != CHATML
    rows = [_two_turns({"weight": 2})]
    for values in ({}, {"train_on_eot": "none"}, {"train_on_eot": "all"}, {"roles_to_train": ["user", "assistant"]}):
        marked = _prepare(word_tokenizer, tmp_path, rows, **values).train[0]
        word_tokenizer.chat_template = plain
        by_prefix = _prepare(word_tokenizer, tmp_path, rows, chat_template=None, **values).train[0]
        word_tokenizer.chat_template = None
        assert _weighted_tokens(word_tokenizer, by_prefix) == _weighted_tokens(word_tokenizer, marked), values


@pytest.mark.parametrize("weight, shown", [(-1, "-1"), ("two", "'two'"), (True, "True")])
def test_a_bad_weight_names_file_row_and_message(word_tokenizer, tmp_path, weight, shown):
    rows = [_two_turns(), _two_turns({"weight": weight})]
    with pytest.raises(
        DataError,
        match=rf"train.jsonl, row 1: messages\[3\]: 'weight' is {shown}; a message's weight must be a number >= 0",
    ):
        _prepare(word_tokenizer, tmp_path, rows)


def test_a_weight_on_a_role_that_is_not_trained_is_an_error(word_tokenizer, tmp_path):
    row = _two_turns()
    row["messages"][2]["weight"] = 2
    with pytest.raises(
        DataError, match=r"row 0: messages\[2\] \(user\) has a weight, but data.roles_to_train=\['assistant'\]"
    ):
        _prepare(word_tokenizer, tmp_path, [row])


def test_a_non_boolean_train_flag_is_an_error(word_tokenizer, tmp_path):
    with pytest.raises(
        DataError, match=r"row 0: messages\[3\]: 'train' is 'no'; a message's train flag must be true or false"
    ):
        _prepare(word_tokenizer, tmp_path, [_two_turns({"train": "no"})])


def test_weights_need_assistant_only_loss(word_tokenizer, tmp_path):
    with pytest.raises(
        DataError, match=r"messages\[3\] sets a weight or train flag, which needs data.assistant_only_loss=true"
    ):
        _prepare(word_tokenizer, tmp_path, [_two_turns({"weight": 2})], assistant_only_loss=False)


@pytest.mark.parametrize("values, message", [
    ({"roles_to_train": ["robot"]}, "data.roles_to_train"),
    ({"roles_to_train": []}, "data.roles_to_train"),
    ({"train_on_eot": "sometimes"}, "data.train_on_eot='sometimes': use one of all, turn, last, none"),
    ({"last_turn_only": "yes"}, "data.last_turn_only='yes': must be true or false"),
    ({"assistant_only_loss": False, "last_turn_only": True}, "needs data.assistant_only_loss=true"),
])  # fmt: skip
def test_bad_turn_settings_fail_when_built(tmp_path, values, message):
    path = write_jsonl(tmp_path / "train.jsonl", [_two_turns()])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings(sources=[{"path": str(path)}], **{"assistant_only_loss": True, **values})
