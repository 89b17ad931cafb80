"""What the contamination check does with what it finds (report, drop, error), the run's own held-out rows,
exact duplicates, `against` files, bad input, and its cache. Small files; the word tokenizer of builders.py."""

from __future__ import annotations

import json

import pytest

import sft_exp.data.contamination as contamination
from sft_exp.data import describe, prepare_datasets
from sft_exp.data.contamination import EvalTexts, NotChecked
from sft_exp.errors import ConfigError, DataError
from sft_exp.evaluation.texts import evaluation_texts
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl

PROBLEM = "Max bought stamps at the post office and some of them had a snowflake design"
REWORDED = "Bella bought stamps at the post office and some of them had a snowflake design on them"
TASK = EvalTexts("quiz", "quiz.jsonl", [["What is the capital of France", "Paris"], [PROBLEM, "12"]])


@pytest.fixture
def tokenizer():
    return make_word_tokenizer()


def _file(path, rows) -> str:
    """`rows` written to `path` (left as it is when it holds them: a rewrite would be a new file to the cache)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def _prepare(tmp_path, train_rows, eval_texts=(), tokenizer=None, **values):
    source = {"path": _file(tmp_path / "train.jsonl", train_rows)}
    if "eval_rows" in values:
        source["eval_path"] = _file(tmp_path / "eval.jsonl", values.pop("eval_rows"))
    chosen = settings(sources=[source], chat_template="chatml", **values)
    return prepare_datasets(
        chosen, tokenizer or make_word_tokenizer(), eval_texts=eval_texts, cache_dir=str(tmp_path / "cache")
    )


ROWS = [conversation("Hi", "Hello"), conversation(REWORDED, "How many"), conversation("Reverse abc", "cba"),
        conversation("Hi", "Hello"), conversation("Hello", "Hi there")]  # fmt: skip
HELD_OUT = [conversation("Reverse abc", "cba"), conversation("Bye", "Bye")]


def test_report_counts_per_source_and_per_eval_and_trains_on_them(tmp_path):
    data = _prepare(tmp_path, ROWS, [TASK], eval_rows=HELD_OUT)
    found = data.stats["contamination"]
    assert (found["rows"], found["rows_checked"], found["duplicates"]) == (2, 5, 1)
    assert found["per_source"] == {"train": {"rows_checked": 5, "rows": 2, "duplicates": 1}}
    assert found["per_eval"]["quiz"] == {
        "kind": "task",
        "source": "quiz.jsonl",
        "items_checked": 2,
        "rows": 1,
        "items_matched": 1,
    }
    assert found["per_eval"]["held-out rows"]["rows"] == 1  # the short row equal to a held-out row
    by_row = {m["row"]: m for m in data.contamination}
    assert by_row[1] == {
        "source": "train",
        "file": str(tmp_path / "train.jsonl"),
        "row": 1,
        "turn": 1,
        "field": "messages[0].content",
        "eval": "quiz",
        "item": 1,
        "item_source": "row 1 of quiz.jsonl",
        "kind": "ngram",
        "ngram": "bought stamps at the post office and some",
        "shared_ngrams": 7,
    }
    assert by_row[2]["eval"] == "held-out rows" and by_row[2]["kind"] == "equal"
    assert by_row[2]["item_source"] == f"row 0 of {tmp_path / 'eval.jsonl'}"
    assert len(data.train) == 5  # report: nothing dropped
    line = describe(data)
    assert (
        "contamination check (8-word n-grams, mode report): 2 of 5 training rows match an eval text [quiz: 1 rows, "
        "1 of 2 items; held-out rows: 1 rows, 1 of 2 items]; 1 exact duplicate training rows" in line
    )


def test_drop_removes_them_and_counts_them_as_drops(tmp_path):
    data = _prepare(tmp_path, ROWS, [TASK], eval_rows=HELD_OUT, decontamination={"mode": "drop"})
    assert len(data.train) == 3
    source = data.stats["sources"]["train"]
    assert source["rows_dropped"] == {"contaminated": 2} and source["rows_kept"] == 3
    assert data.stats["rows_dropped"] == {"contaminated": 2}
    assert data.stats["contamination"]["per_source"]["train"]["dropped_contaminated"] == 2
    assert "2 rows dropped {'contaminated': 2}" in describe(data)


def test_error_stops_naming_file_row_task_item_and_ngram(tmp_path):
    with pytest.raises(DataError) as error:
        _prepare(tmp_path, ROWS, [TASK], eval_rows=HELD_OUT, decontamination={"mode": "error"})
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'train.jsonl'}, row 1, turn 1 (messages[0].content): the training text "
        "shares the 8-gram \"bought stamps at the post office and some\" with eval 'quiz' item 1 "
        "(row 1 of quiz.jsonl); 2 of 5 training rows match"
    )
    assert "data.decontamination.mode=drop" in message


def test_duplicates_across_a_random_split_are_found(tmp_path):
    """Each row twice in the file: a random split holds out some rows whose twin trains."""
    distinct = [
        conversation(f"Reverse {word}", word[::-1])
        for word in ("abc", "cat", "dog", "sun", "hat", "pin", "cup", "map", "jam", "fox")
    ]
    data = _prepare(tmp_path, distinct * 2, eval_split_size=6)
    held = {json.dumps(example["prompt"]) for example in data.heldout_examples}
    trained_twins = sum(1 for row in distinct * 2 if json.dumps(row["messages"][:1]) in held) - len(
        data.heldout_examples
    )
    found = data.stats["contamination"]
    assert trained_twins > 0 and found["per_eval"]["held-out rows"]["rows"] == trained_twins
    assert found["duplicates"] == 10 - len(held)  # a row whose twin trains too


def test_deduplicate_exact_drops_repeats_keeping_the_first_in_source_order(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [conversation("Hi", "Hello"), conversation("Hi  ", "Hello"),
                                               conversation("hi", "Hello")])  # fmt: skip
    second = write_jsonl(tmp_path / "b.jsonl", [conversation("Hi", "Hello"), conversation("Bye", "Bye")])
    chosen = settings(sources=[{"path": str(first)}, {"path": str(second)}], chat_template="chatml")
    counted = prepare_datasets(chosen, make_word_tokenizer(), cache_dir=str(tmp_path / "cache"))
    per_source = counted.stats["contamination"]["per_source"]
    assert (per_source["a"]["duplicates"], per_source["b"]["duplicates"]) == (1, 1)  # whitespace aside, case kept
    chosen = settings(
        sources=[{"path": str(first)}, {"path": str(second)}], chat_template="chatml", deduplicate="exact"
    )
    dropped = prepare_datasets(chosen, make_word_tokenizer(), cache_dir=str(tmp_path / "cache"))
    assert len(dropped.train) == 3 and dropped.stats["rows_dropped"] == {"duplicate": 2}
    assert dropped.stats["sources"]["a"]["rows_dropped"] == {"duplicate": 1}
    assert sorted(dropped.stats["train_examples_per_source"].items()) == [("a", 2), ("b", 1)]


def test_against_files_by_column_and_whole_rows(tmp_path):
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [{"question": PROBLEM, "answer": "12"}])
    whole = write_jsonl(tmp_path / "chats.jsonl", [conversation("Hello", "Hi there")])
    data = _prepare(
        tmp_path,
        ROWS,
        decontamination={"against": [{"path": str(quiz), "column": "question"}, {"path": str(whole), "name": "chats"}]},
    )
    per_eval = data.stats["contamination"]["per_eval"]
    assert per_eval["quiz.jsonl"]["rows"] == 1 and per_eval["quiz.jsonl"]["kind"] == "file"
    assert per_eval["chats"]["rows"] == 1  # row 4 equals its one row


def test_bad_input_is_one_error_before_any_tokenizing(tmp_path, monkeypatch):
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [{"question": PROBLEM, "answer": "12"}])
    monkeypatch.setattr("sft_exp.data.prepare.encode_batch", lambda *a, **k: pytest.fail("tokenized before the check"))
    with pytest.raises(
        ConfigError,
        match=rf"data.decontamination.against\[0\].column='problem': {quiz} has no column "
        r"'problem' \(its columns: question, answer\)",
    ):
        _prepare(tmp_path, ROWS, decontamination={"against": [{"path": str(quiz), "column": "problem"}]})
    with pytest.raises(
        ConfigError,
        match=r"data.decontamination.against\[0\].path: /no/such.jsonl \(column 'q'\) "
        "does not exist",
    ):
        settings(
            sources=[{"path": str(quiz)}], decontamination={"against": [{"path": "/no/such.jsonl", "column": "q"}]}
        )
    for ngram in (3, 0, "8"):
        with pytest.raises(ConfigError, match=rf"data.decontamination.ngram={ngram!r}: must be an integer >= 4"):
            settings(sources=[{"path": str(quiz)}], decontamination={"ngram": ngram})
    with pytest.raises(ConfigError, match="data.decontamination.mode='warn': use one of report, drop, error, off"):
        settings(sources=[{"path": str(quiz)}], decontamination={"mode": "warn"})


def test_what_cannot_be_read_is_named_as_not_checked(tmp_path):
    class Mine:  # a user's evaluator: sft_exp cannot know its texts
        def evaluate(self, model, tokenizer, **kwargs):
            return {}

    texts = evaluation_texts([Mine()]) + [NotChecked("mmlu", "lm-eval could not load its documents offline (...)")]
    data = _prepare(tmp_path, ROWS, texts)
    assert [x["name"] for x in data.stats["contamination"]["not_checked"]] == ["Mine", "mmlu"]
    assert "not checked: Mine, mmlu" in describe(data)


def test_the_result_is_cached_and_a_changed_eval_text_checks_again(tmp_path, monkeypatch):
    first = _prepare(tmp_path, ROWS, [TASK])
    monkeypatch.setattr(contamination, "_find", lambda *a: pytest.fail("checked again, not read from the cache"))
    again = _prepare(tmp_path, ROWS, [TASK])
    assert again.stats["contamination"] == first.stats["contamination"] and again.fingerprint == first.fingerprint
    monkeypatch.undo()
    changed = EvalTexts("quiz", "quiz.jsonl", [["What is the capital of France", "Paris"]])
    other = _prepare(tmp_path, ROWS, [changed])
    assert other.stats["contamination"]["per_eval"]["quiz"]["rows"] == 0 and other.fingerprint != first.fingerprint
    off = _prepare(tmp_path, ROWS, [TASK], decontamination={"mode": "off"})
    assert off.stats["contamination"] == {"mode": "off"}
    assert "contamination check off (data.decontamination.mode=off)" in describe(off)


def test_on_the_command_line_a_bad_against_file_and_mode_error_stop_before_the_model_loads():
    from sft_exp.paths import asset_path
    from tests.helpers import run_sft

    demo, quiz = asset_path("demo/train.jsonl"), "tests/assets/eval/gsm8k_test_first50.jsonl"
    job = run_sft(f"data.decontamination.against=[{{path:{quiz},column:problem}}]", "logger=none")
    said = job.stdout + job.stderr
    assert job.returncode == 2 and "built a fresh" not in said
    assert f"data.decontamination.against[0].column='problem': {quiz} has no column 'problem'" in said
    # The demo's own training file as an eval text: every training row is in it.
    job = run_sft(
        "data.decontamination.mode=error",
        f"data.decontamination.against=[{{path:{demo},name:copy}}]",
        "data.sources.0.max_samples=40",
        "logger=none",
    )
    said = job.stdout + job.stderr
    assert job.returncode == 2 and "built a fresh" not in said
    assert f"{demo}, row 0, the whole row: the training text is the same text" in said
    assert "with eval 'copy' item 0 (row 0 of" in said and "data.decontamination.mode=drop" in said
