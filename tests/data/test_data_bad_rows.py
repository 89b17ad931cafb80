"""Bad input: one clear error naming file, row and problem; or, with on_bad_row=drop, counted drops."""

from __future__ import annotations

import re

import pytest

from sft_exp.data import prepare_datasets
from sft_exp.data.templates import CHATML
from sft_exp.errors import ConfigError, DataError
from tests.data.builders import conversation, settings, write_jsonl

GOOD = conversation("Hi", "Hello")
# (bad row, reason it is counted under, words the error message must contain)
BAD_ROWS = {
    "missing_field": ({"messages": None}, "missing_field", "'messages' is missing"),
    "missing_content": ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "missing_field", "no 'content'"),
    "unknown_role": ({"messages": [{"role": "wizard", "content": "Hi"}, {"role": "assistant", "content": "x"}]}, "unknown_role", "'wizard'"),
    "non_string_content": ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}, "non_string_content", "int content"),
    "empty_conversation": ({"messages": []}, "empty_conversation", "empty conversation"),
    "no_assistant_turn": ({"messages": [{"role": "user", "content": "Hi"}]}, "no_assistant_turn", "no assistant turn"),
}  # fmt: skip


def _prepare(tokenizer, tmp_path, rows, **values):
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = {"sources": [{"path": str(path), "format": "messages"}], "chat_template": "chatml", **values}
    return prepare_datasets(settings(**cfg), tokenizer)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_an_error_naming_file_row_and_problem(word_tokenizer, tmp_path, case):
    bad, reason, words = BAD_ROWS[case]
    with pytest.raises(DataError) as raised:
        _prepare(word_tokenizer, tmp_path, [GOOD, GOOD, bad, GOOD])
    message = str(raised.value)
    assert "chat.jsonl, row 2:" in message and words in message and f"[{reason}]" in message
    assert "on_bad_row=drop" in message


def test_drop_counts_every_bad_row_by_reason(word_tokenizer, tmp_path):
    rows = [GOOD] + [bad for bad, _, _ in BAD_ROWS.values()] + [GOOD]
    data = _prepare(word_tokenizer, tmp_path, rows, on_bad_row="drop")
    assert len(data.train) == 2
    expected = {"empty_conversation": 1, "missing_field": 2, "no_assistant_turn": 1, "non_string_content": 1,
                "unknown_role": 1}  # fmt: skip
    assert data.stats["rows_dropped"] == expected
    assert data.stats["sources"]["chat"]["rows_read"] == len(rows)


def test_template_mismatch_is_a_row_error(word_tokenizer, tmp_path):
    # A template that rewrites some replies cannot be masked exactly: the reply is not in the render.
    path = tmp_path / "rewrite.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] | replace('abc', 'ABC') + '\\n' }}"
                    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")  # fmt: skip
    rows = [conversation("Hi", "cba"), conversation("Hi", "abc")]
    with pytest.raises(DataError, match=re.escape("chat.jsonl, row 1:") + ".*template_mismatch"):
        _prepare(word_tokenizer, tmp_path, rows, chat_template=str(path), assistant_only_loss=True)
    data = _prepare(
        word_tokenizer, tmp_path, rows, chat_template=str(path), assistant_only_loss=True, on_bad_row="drop"
    )
    assert data.stats["rows_dropped"] == {"template_mismatch": 1}


def test_every_row_dropped_is_an_error(word_tokenizer, tmp_path):
    rows = [BAD_ROWS["no_assistant_turn"][0]] * 3
    with pytest.raises(DataError, match="every one of its 3 training rows was dropped"):
        _prepare(word_tokenizer, tmp_path, rows, on_bad_row="drop")


def test_rows_of_mixed_types_are_still_checked_one_by_one(word_tokenizer, tmp_path):
    # Arrow cannot load a field that is a string in one row and a list in another; each row is judged alone.
    rows = [GOOD, {"messages": [{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(DataError, match=re.escape("chat.jsonl, row 1:") + ".*list content"):
        _prepare(word_tokenizer, tmp_path, rows)


def test_invalid_json_names_the_line(word_tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(DataError, match="chat.jsonl, line 2: not valid JSON"):
        prepare_datasets(settings(sources=[{"path": str(path)}], chat_template="chatml"), word_tokenizer)


def test_unknown_columns_say_how_to_map_them(word_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Bye"}])
    with pytest.raises(DataError, match="cannot tell the format.*columns"):
        prepare_datasets(settings(sources=[str(path)]), word_tokenizer)


def test_conversations_without_any_chat_template(word_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD])
    with pytest.raises(DataError, match="no chat template; set data.chat_template"):
        prepare_datasets(settings(sources=[str(path)]), word_tokenizer)


def test_assistant_only_loss_with_a_template_that_cannot_mark_turns_fails_before_reading(word_tokenizer, tmp_path):
    path = tmp_path / "shout.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(ConfigError, match="data.assistant_only_loss"):
        _prepare(word_tokenizer, tmp_path, [GOOD], chat_template=str(path), assistant_only_loss=True)


def test_packing_with_an_attention_that_would_mix_examples(word_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD])
    cfg = {"sources": [{"path": str(path)}], "chat_template": "chatml", "packing": True}
    with pytest.raises(ConfigError, match="data.packing=true with model.attn_implementation=paged"):
        prepare_datasets(settings(**cfg), word_tokenizer, attn_implementation="paged|sdpa")


def test_rows_stay_aligned_across_chunks_and_batches_when_rows_are_dropped(word_tokenizer, tmp_path):
    """1,300 rows span two map batches and several tokenizer chunks; drops in each must not shift rows."""
    rows = [conversation(f"What is {i}", " ".join(str(i))) for i in range(1300)]
    bad_at = (5, 300, 1001, 1299)
    for i in bad_at:
        rows[i] = {"messages": [{"role": "user", "content": "Hi"}]}  # no assistant turn
    with pytest.raises(DataError, match=re.escape("chat.jsonl, row 5:")):
        _prepare(word_tokenizer, tmp_path, rows)
    data = _prepare(word_tokenizer, tmp_path, rows, on_bad_row="drop", assistant_only_loss=True)
    assert data.stats["rows_dropped"] == {"no_assistant_turn": len(bad_at)}
    by_ids = {tuple(ids): labels for ids, labels in zip(data.train["input_ids"], data.train["labels"])}
    assert len(by_ids) == 1300 - len(bad_at)
    for i in (0, 4, 6, 299, 301, 1000, 1002, 1298):
        text = word_tokenizer.apply_chat_template(rows[i]["messages"], chat_template=CHATML, tokenize=False)
        ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
        trained = [
            word_tokenizer.convert_ids_to_tokens(t) for t, label in zip(ids, by_ids[tuple(ids)]) if label != -100
        ]
        assert "".join(trained) == " ".join(str(i)) + "<|im_end|>"  # row i's own answer, nothing else
