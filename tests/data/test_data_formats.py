"""Every format, masked token by token against hand-written expectations (word-level tokenizer)."""

from __future__ import annotations

import json

import pytest

from sft_exp.data import prepare_datasets
from sft_exp.data.templates import CHATML
from tests.data.builders import conversation, settings, supervised_tokens, write_jsonl

EOS = "<|endoftext|>"


def _row(tokenizer, tmp_path, rows, source=None, **values) -> dict:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = prepare_datasets(settings(sources=[{"path": str(path), **(source or {})}], **values), tokenizer)
    return data.train[0] if len(data.train) == 1 else data


def _tokens(tokenizer, row) -> list[str]:
    return tokenizer.convert_ids_to_tokens(row["input_ids"])


def test_text_trains_every_token_and_ends_with_eos(word_tokenizer, tmp_path):
    row = _row(word_tokenizer, tmp_path, [{"text": "Hello there"}])
    assert _tokens(word_tokenizer, row) == ["Hello", " ", "there", EOS]
    assert supervised_tokens(word_tokenizer, row) == ["Hello", " ", "there", EOS]


def test_prompt_completion_strings_train_the_completion_and_eos(word_tokenizer, tmp_path):
    row = _row(word_tokenizer, tmp_path, [{"prompt": "Reverse abc:", "completion": " cba"}])
    assert _tokens(word_tokenizer, row) == ["Reverse", " ", "abc", ":", " ", "cba", EOS]
    assert supervised_tokens(word_tokenizer, row) == [" ", "cba", EOS]


def test_completion_only_loss_false_trains_the_prompt_too(word_tokenizer, tmp_path):
    row = _row(word_tokenizer, tmp_path, [{"prompt": "Hi", "completion": " there"}], completion_only_loss=False)
    assert supervised_tokens(word_tokenizer, row) == ["Hi", " ", "there", EOS]


def test_conversational_prompt_completion_trains_the_completion_turn(word_tokenizer, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Bye"}]}]
    row = _row(word_tokenizer, tmp_path, rows, chat_template="chatml")
    assert supervised_tokens(word_tokenizer, row) == ["Bye", "<|im_end|>"]
    assert row["labels"][-1] == -100  # the newline after <|im_end|>


def test_messages_with_tools_and_tool_calls(word_tokenizer, tmp_path):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "weather Paris"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It s sunny"},
    ]
    row = _row(word_tokenizer, tmp_path, [{"messages": messages, "tools": json.dumps([tool])}],
               chat_template="chatml", assistant_only_loss=True)  # fmt: skip
    trained = "".join(supervised_tokens(word_tokenizer, row))
    expected_call = json.dumps(call["function"], ensure_ascii=False)
    assert trained == f"<tool_call>\n{expected_call}\n</tool_call><|im_end|>It s sunny<|im_end|>"
    tokens = _tokens(word_tokenizer, row)
    assert "get_weather" in "".join(tokens[: tokens.index("user")])  # the tools are in the system turn


def test_sharegpt_maps_speakers_to_roles(word_tokenizer, tmp_path):
    turns = [
        {"from": "system", "value": "Be brief"},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
    ]
    row = _row(word_tokenizer, tmp_path, [{"conversations": turns}], chat_template="chatml", assistant_only_loss=True)
    assert supervised_tokens(word_tokenizer, row) == ["Hello", "<|im_end|>"]
    assert _tokens(word_tokenizer, row)[:3] == ["<|im_start|>", "system", "\n"]


def test_alpaca_becomes_a_prompt_and_a_trained_reply(word_tokenizer, tmp_path):
    rows = [{"instruction": "Translate", "input": "cat", "output": "chat"}]
    row = _row(word_tokenizer, tmp_path, rows, chat_template="chatml")
    tokens = _tokens(word_tokenizer, row)
    assert tokens[:8] == ["<|im_start|>", "user", "\n", "Translate", "\n", "\n", "cat", "<|im_end|>"]
    assert supervised_tokens(word_tokenizer, row) == ["chat", "<|im_end|>"]


def test_columns_map_format_fields_to_other_names(word_tokenizer, tmp_path):
    rows = [{"question": "Hi", "answer": " there"}]
    source = {"format": "prompt_completion", "columns": {"prompt": "question", "completion": "answer"}}
    row = _row(word_tokenizer, tmp_path, rows, source)
    assert supervised_tokens(word_tokenizer, row) == [" ", "there", EOS]


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"text": "Hi"}, "text"),
        ({"prompt": "Hi", "completion": "Bye"}, "prompt_completion"),
        (conversation("Hi", "Bye"), "messages"),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Bye"}]}, "sharegpt"),
        ({"instruction": "Hi", "input": "", "output": "Bye"}, "alpaca"),
    ],
)
def test_auto_detects_the_format(word_tokenizer, tmp_path, row, fmt):
    data = _row(word_tokenizer, tmp_path, [row, row], chat_template="chatml")
    assert data.stats["sources"]["rows"]["format"] == fmt


def test_zephyr_template_ends_turns_with_eos(word_tokenizer, tmp_path):
    row = _row(word_tokenizer, tmp_path, [conversation("Hi", "Bye")], chat_template="zephyr", assistant_only_loss=True)
    assert _tokens(word_tokenizer, row)[:4] == ["<|user|>", "\n", "Hi", EOS]
    assert supervised_tokens(word_tokenizer, row) == ["Bye", EOS]


def test_chat_template_from_a_jinja_file(word_tokenizer, tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")  # fmt: skip
    row = _row(word_tokenizer, tmp_path, [conversation("Hi", "Bye")], chat_template=str(path), assistant_only_loss=True)
    assert _tokens(word_tokenizer, row) == ["user", ":", " ", "Hi", "\n", "assistant", ":", " ", "Bye", "\n"]
    assert supervised_tokens(word_tokenizer, row) == ["Bye"]


def test_tokenizer_own_template_is_the_default(tmp_path):
    from tests.data.builders import make_word_tokenizer

    tokenizer = make_word_tokenizer(chat_template=CHATML)
    row = _row(tokenizer, tmp_path, [conversation("Hi", "Bye")], assistant_only_loss=True)
    assert supervised_tokens(tokenizer, row) == ["Bye", "<|im_end|>"]
