"""`python -m sft_exp.preview`: trained tokens marked, statistics printed, user errors without traceback."""

from __future__ import annotations

import json

from sft_exp.tools.preview import main, render_row
from tests.data.builders import conversation, write_jsonl


def test_preview_marks_trained_tokens_and_prints_statistics(tmp_path, capsys):
    path = write_jsonl(tmp_path / "chat.jsonl", [conversation("Hi there", "Hello"), conversation("Bye", "See you")])
    overrides = [f"data.sources=[{{path:{path},name:chat}}]", "data.eval_sources=[]", "data.packing=true"]
    assert main(["--plain", "--rows", "1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "[[Hello<|im_end|>]]" in out and "|<|im_start|>" in out  # the second example starts mid-row
    stats = json.loads(out[out.index("{") :])
    assert stats["rows_read"] == 2 and stats["packing"]["packed_rows"] == 1


def test_preview_reports_a_config_mistake_without_a_traceback(capsys):
    assert main(["data.sources=[{path:/no/such.jsonl}]"]) == 2  # a user error: exit 2, as in training
    assert "data.sources[0].path" in capsys.readouterr().err


def test_render_row_marks_runs(word_tokenizer):
    ids = word_tokenizer.convert_tokens_to_ids(["Hi", "there", "Bye"])
    row = {"input_ids": ids, "labels": [-100, ids[1], ids[2]], "position_ids": [0, 1, 0]}
    assert render_row(word_tokenizer, row, color=False) == "Hi[[there]]|[[Bye]]"


def test_render_row_marks_weighted_tokens(word_tokenizer):
    ids = word_tokenizer.convert_tokens_to_ids(["Hi", "there", "Bye", "Hello"])
    row = {
        "input_ids": ids,
        "labels": [-100, ids[1], ids[2], ids[3]],
        "position_ids": [0, 1, 2, 3],
        "loss_weights": [0.0, 1.0, 2.0, 0.5],
    }
    assert render_row(word_tokenizer, row, color=False) == "Hi[[there]][[Bye]]x2[[Hello]]x0.5"


def test_preview_shows_message_weights_and_takes_the_turn_settings(tmp_path, capsys):
    row = conversation("Hi there", "Hello", "Bye", "See you")
    row["messages"][3]["weight"] = 2
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    overrides = [
        f"data.sources=[{{path:{path},name:chat}}]",
        "data.eval_sources=[]",
        "data.eval_split_size=0",
        "data.train_on_eot=none",
        "data.roles_to_train=[user,assistant]",
    ]
    assert main(["--plain", "--rows", "1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "[[Hi there]]" in out and "[[Hello]]<|im_end|>" in out and "[[See you]]x2<|im_end|>" in out
