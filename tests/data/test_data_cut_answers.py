"""Truncation that cuts an answer (or its end of turn) is counted apart from truncation that cuts only
a prompt, and warned with its share of the rows."""

from __future__ import annotations

import json
import logging

from sft_exp.data import DataSettings, describe, prepare_datasets


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cut_answers_are_counted_and_warned(word_tokenizer, tmp_path, caplog):
    long_answer = " ".join(["word"] * 80)
    long_prompt = " ".join(["word"] * 80)
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
    ]
    path = _write(tmp_path / "chat.jsonl", rows)
    settings = DataSettings(
        sources=[{"path": str(path)}],
        max_length=40,
        eval_split_size=0,
        seed=0,
        chat_template="chatml",
        assistant_only_loss=True,
        on_bad_row="drop",
    )
    with caplog.at_level(logging.WARNING, logger="sft_exp.data.prepare"):
        data = prepare_datasets(settings, word_tokenizer, cache_dir=str(tmp_path / "cache"))
    # The long prompt is cut with its answer: no trained token is left, so that row is dropped instead.
    assert data.stats["rows_truncated"] == 2 and data.stats["answers_cut"] == 1
    assert data.stats["max_length_from"] == "data.max_length"
    assert "1 of 3 rows (33.3%) lost part of an answer or its end of turn" in caplog.text
    assert "(1 of them inside an answer) at max_length 40 (from data.max_length)" in describe(data)


def test_a_conversation_with_no_user_turn_trains_but_is_counted_and_warned(word_tokenizer, tmp_path, caplog):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
    ]
    path = _write(tmp_path / "chat.jsonl", rows)
    settings = DataSettings(
        sources=[{"path": str(path)}], eval_split_size=0, seed=0, chat_template="chatml", assistant_only_loss=True
    )
    with caplog.at_level(logging.WARNING, logger="sft_exp.data.prepare"):
        data = prepare_datasets(settings, word_tokenizer, cache_dir=str(tmp_path / "cache"))
    assert len(data.train) == 2 and data.stats["rows_flawed"] == {"no_user_turn": 1}
    assert "1 of 2 rows (50.0%) are conversations with no user turn" in caplog.text
