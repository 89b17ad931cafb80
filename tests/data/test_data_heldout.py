"""Where the eval rows come from: a source's own eval_path, data.eval_split_size, data.eval_sources.

Replacing data.sources on the demo must never keep the demo's eval rows or prompts (issue 10 item 2).
"""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from sft_exp.data import DataSettings, Source, describe, prepare_datasets
from sft_exp.data.splits import MAX_HELDOUT_EXAMPLES, held_out_count
from sft_exp.data.templates import CHATML
from sft_exp.errors import ConfigError
from sft_exp.paths import asset_path
from tests.data.builders import conversation, settings, write_jsonl
from tests.helpers import compose


def _digits(i: int) -> str:
    return " ".join(str(i))  # digits one by one: the word-level test tokenizer knows single characters


def _user_rows(n: int, word: str = "cat") -> list[dict]:
    return [conversation(f"Reverse {word} {_digits(i)}", f"{_digits(i)} {word}") for i in range(n)]


def _settings_from_config(overrides: list[str]) -> DataSettings:
    from hydra.utils import instantiate

    return instantiate(compose(overrides).data)


@pytest.fixture(scope="module")
def demo_tokenizer():
    return AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))


def test_replacing_the_demo_sources_drops_the_demo_eval_rows_and_prompts(tmp_path, demo_tokenizer):
    user = write_jsonl(tmp_path / "train.jsonl", _user_rows(40))
    data_settings = _settings_from_config(["data=demo", f"data.sources=[{{path:{user}}}]"])
    assert data_settings.sources == [Source(path=str(user))] and data_settings.eval_sources == []
    data = prepare_datasets(data_settings, demo_tokenizer)
    assert data.source_names == ["train"]
    assert data.stats["eval_from"] == [
        {"source": "train", "from": "eval_split_size", "path": str(user), "eval_split_size": 0.05, "rows": 2}
    ]
    assert len(data.eval) == 2 and len(data.train) == 38
    user_prompts = {row["messages"][0]["content"] for row in _user_rows(40)}
    assert len(data.heldout_examples) == 2
    for example in data.heldout_examples:
        assert example["prompt"][-1]["content"] in user_prompts and example["reference"].endswith(" cat")
    assert describe(data).endswith("eval: 5% of " + f"{tmp_path.name}/train.jsonl held out (2 rows)")


def test_the_demo_holds_out_its_own_eval_file(demo_tokenizer):
    data_settings = _settings_from_config(["data.sources.0.max_samples=40", "data.sources.0.eval_max_samples=8"])
    assert data_settings.sources[0].eval_path == str(asset_path("demo/eval.jsonl"))
    data = prepare_datasets(data_settings, demo_tokenizer)
    assert len(data.train) == 40 and len(data.eval) == 8 and len(data.heldout_examples) == 8
    assert [origin["from"] for origin in data.stats["eval_from"]] == ["eval_path"]
    assert "eval: 8 rows from demo/eval.jsonl" in describe(data)


def test_eval_split_size_holds_out_rows_of_the_users_file_never_trained_on(word_tokenizer, tmp_path):
    user = write_jsonl(tmp_path / "chat.jsonl", _user_rows(100))
    data = prepare_datasets(DataSettings(sources=[str(user)], chat_template="chatml", seed=3), word_tokenizer)
    assert len(data.eval) == 5 and len(data.train) == 95  # the default data.eval_split_size=0.05
    assert not {tuple(ids) for ids in data.eval["input_ids"]} & {tuple(ids) for ids in data.train["input_ids"]}
    assert len(data.heldout_examples) == 5
    eval_rows = {tuple(ids) for ids in data.eval["input_ids"]}
    for example in data.heldout_examples:  # each example is one of the eval rows, cut before its answer
        messages = [*example["prompt"], {"role": "assistant", "content": example["reference"]}]
        text = word_tokenizer.apply_chat_template(messages, chat_template=CHATML, tokenize=False)
        assert tuple(word_tokenizer(text, add_special_tokens=False)["input_ids"]) in eval_rows


@pytest.mark.parametrize(
    "rows, fraction, held_out",
    [(19, 0.05, 0), (20, 0.05, 1), (39, 0.05, 1), (40, 0.05, 2), (100, 0.29, 29), (10, 0.1, 1)],
)
def test_held_out_fraction_rounds_down_but_keeps_one_row_from_20_rows(rows, fraction, held_out):
    assert held_out_count(rows, fraction) == held_out


def test_a_small_file_has_no_eval_set_and_the_summary_says_what_to_set(word_tokenizer, tmp_path):
    user = write_jsonl(tmp_path / "chat.jsonl", _user_rows(10))
    data = prepare_datasets(DataSettings(sources=[str(user)], chat_template="chatml", seed=0), word_tokenizer)
    assert data.eval is None and data.heldout_examples == [] and len(data.train) == 10
    assert "no eval set: set data.eval_split_size or a source's eval_path" in describe(data)


def test_eval_path_is_read_like_path_capped_and_keeps_the_source_name(word_tokenizer, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _user_rows(50))
    held = write_jsonl(tmp_path / "held.jsonl", _user_rows(12, word="dog"))
    source = {"path": str(train), "name": "mine", "eval_path": str(held), "eval_max_samples": 10}
    data = prepare_datasets(settings(sources=[source], eval_split_size=0.05, chat_template="chatml"), word_tokenizer)
    assert len(data.train) == 50 and len(data.eval) == 10  # no split: the source has its own held-out file
    assert data.source_names == ["mine"] and set(data.eval["source_ids"][0]) == {0}
    assert [example["reference"] for example in data.heldout_examples] == [f"{_digits(i)} dog" for i in range(10)]
    assert data.stats["eval_from"] == [{"source": "mine", "from": "eval_path", "path": str(held), "rows": 10}]


def test_a_source_without_eval_path_is_split_beside_one_with_it(word_tokenizer, tmp_path):
    first = {
        "path": str(write_jsonl(tmp_path / "a.jsonl", _user_rows(40))),
        "eval_path": str(write_jsonl(tmp_path / "a_eval.jsonl", _user_rows(3, word="dog"))),
    }
    second = {"path": str(write_jsonl(tmp_path / "b.jsonl", _user_rows(40, word="sunny")))}
    data = prepare_datasets(
        settings(sources=[first, second], eval_split_size=0.05, chat_template="chatml"), word_tokenizer
    )
    assert [(o["source"], o["from"], o["rows"]) for o in data.stats["eval_from"]] == [
        ("a", "eval_path", 3),
        ("b", "eval_split_size", 2),
    ]
    assert len(data.eval) == 5 and len(data.train) == 78
    # interleaved across groups, so a task's `limit` still sees both sources
    assert [e["reference"].split()[-1] for e in data.heldout_examples[:4]] == ["dog", "sunny", "dog", "sunny"]
    assert "eval: 3 rows from" in describe(data) and "; 5% of " in describe(data)


def test_heldout_examples_are_capped_evenly_and_the_cap_is_counted(word_tokenizer, tmp_path, monkeypatch):
    assert MAX_HELDOUT_EXAMPLES == 1000
    monkeypatch.setattr("sft_exp.data.splits.MAX_HELDOUT_EXAMPLES", 7)
    user = write_jsonl(tmp_path / "chat.jsonl", _user_rows(60))
    data = prepare_datasets(settings(sources=[str(user)], eval_split_size=0.5, chat_template="chatml"), word_tokenizer)
    assert len(data.eval) == 30 and len(data.heldout_examples) == 7
    assert data.stats["heldout_examples"] == {"rows": 30, "examples": 7, "without_prompt": 0, "left_out_by_cap": 23}
    monkeypatch.setattr("sft_exp.data.splits.MAX_HELDOUT_EXAMPLES", 1000)
    every = prepare_datasets(settings(sources=[str(user)], eval_split_size=0.5, chat_template="chatml"), word_tokenizer)
    assert len(every.heldout_examples) == 30
    picked = [every.heldout_examples.index(example) for example in data.heldout_examples]
    assert picked == [0, 5, 10, 14, 19, 24, 29]  # evenly over all held-out rows, first and last included


def test_data_settings_from_python_equal_the_yaml_built_ones():
    from_yaml = _settings_from_config(["data=demo"])
    from_python = DataSettings(
        sources=[{"path": str(asset_path("demo/train.jsonl")), "name": "demo", "eval_path": str(asset_path("demo/eval.jsonl"))}],
        assistant_only_loss=True, seed=42,  # the demo sets no max_length: the default or the model's context
    )  # fmt: skip
    assert from_python == from_yaml
    assert type(from_yaml.sources[0]) is Source and type(from_yaml.sources[0].columns) is dict
    assert dataclasses.replace(from_python, seed=1) != from_yaml


def test_seed_is_required_and_only_data_settings_are_accepted(word_tokenizer, tmp_path):
    user = str(write_jsonl(tmp_path / "chat.jsonl", _user_rows(2)))
    with pytest.raises(TypeError, match="seed"):
        DataSettings(sources=[user])
    with pytest.raises(ConfigError, match="data.seed"):
        DataSettings(sources=[user], seed=None)
    with pytest.raises(TypeError, match="expected sft_exp.data.DataSettings"):
        prepare_datasets({"sources": [user], "seed": 0}, word_tokenizer)
