"""The data-side homes of open-r1 recipe fields: dataset_mixture (weights as fractions, the test split taken
from the mixed rows), `columns` as a keep-list, `system_prompt`, and a chat template string that does not parse."""

from __future__ import annotations

import datasets
import pytest

from sft_exp.data import prepare_datasets
from sft_exp.data.statistics import describe_eval
from sft_exp.errors import ConfigError, DataError
from tests.data.builders import conversation, settings, write_jsonl
from tests.helpers import compose


def _files(tmp_path, sizes: dict[str, int]) -> list[dict]:
    """One JSONL file per source; each row's question names its source and row: 'a 1 2' is row 12 of a."""
    sources = []
    for name, size in sizes.items():
        rows = [conversation(f"{name} {' '.join(str(i))}", "cat") for i in range(size)]
        sources.append({"path": str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), "name": name})
    return sources


def open_r1_get_dataset(sources: list[dict], weights: list[float], seed: int, test_split_size: float):
    """open-r1's get_dataset for a dataset_mixture (src/open_r1/utils/data.py, snapshot 1416fa0c, Apache-2.0),
    with datasets.load_dataset of the local files in place of hub ids: the reference."""
    pieces = []
    for source, weight in zip(sources, weights):
        ds = datasets.load_dataset("json", data_files=source["path"], split="train")
        pieces.append(ds.shuffle(seed=seed).select(range(int(len(ds) * weight))))
    combined = datasets.concatenate_datasets(pieces).shuffle(seed=seed)
    return combined.train_test_split(test_size=test_split_size, seed=seed)


def _question(messages) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def _texts(data, tokenizer) -> list[str]:
    """The training rows as text, in the order training sees them."""
    return ["".join(tokenizer.convert_ids_to_tokens(ids)) for ids in data.train["input_ids"]]


def _trained_questions(data, tokenizer) -> list[str]:
    return [text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0] for text in _texts(data, tokenizer)]


def test_open_r1_mixture_takes_the_same_rows_as_open_r1(word_tokenizer, tmp_path):
    sources = _files(tmp_path, {"a": 90, "b": 33})
    weights = [0.5, 0.7]
    for source, weight in zip(sources, weights):
        source["weight"] = weight
    reference = open_r1_get_dataset(sources, weights, seed=7, test_split_size=0.1)
    data = prepare_datasets(settings(sources=sources, chat_template="chatml", eval_split_from="mixture",
                                     eval_split_size=0.1, seed=7), word_tokenizer)  # fmt: skip
    # 45 + 23 = 68 mixed rows; ceil(0.1 x 68) = 7 held out, as datasets' train_test_split counts
    assert (len(data.train), len(data.eval)) == (len(reference["train"]), len(reference["test"])) == (61, 7)
    assert _trained_questions(data, word_tokenizer) == [_question(row["messages"]) for row in reference["train"]]
    held_out = sorted(_question(example["prompt"]) for example in data.heldout_examples)
    assert held_out == sorted(_question(row["messages"]) for row in reference["test"])
    assert "10% of the mixed rows held out (7 rows: a " in describe_eval(data.stats)


def test_source_split_holds_out_before_weighting_and_mixture_after(word_tokenizer, tmp_path):
    sources = _files(tmp_path, {"a": 100, "b": 100})
    sources[0]["weight"] = 0.2
    per_source = prepare_datasets(
        settings(sources=sources, chat_template="chatml", eval_split_size=0.1), word_tokenizer
    )
    mixed = prepare_datasets(settings(sources=sources, chat_template="chatml", eval_split_size=0.1,
                                      eval_split_from="mixture"), word_tokenizer)  # fmt: skip
    assert len(per_source.eval) == 20 and len(per_source.train) == 18 + 90  # 10 of each, then 0.2 x 90 of a
    assert len(mixed.eval) == 12 and len(mixed.train) == 108  # 20 + 100 mixed, ceil(0.1 x 120) held out


def test_mixture_weights_are_fractions_of_at_most_one(tmp_path):
    sources = _files(tmp_path, {"a": 5})
    sources[0]["weight"] = 2.0
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight=2.0 with data.eval_split_from=mixture"):
        settings(sources=sources, eval_split_from="mixture")
    with pytest.raises(ConfigError, match="data.eval_split_from='mixed': use one of source, mixture"):
        settings(sources=sources[:0] or _files(tmp_path, {"c": 2}), eval_split_from="mixed")


def test_columns_as_a_keep_list_reads_only_those_columns(word_tokenizer, tmp_path):
    rows = [{"prompt": "Hi", "completion": "Bye", "text": "Hi there", "id": i} for i in range(4)]
    path = write_jsonl(tmp_path / "both.jsonl", rows)
    every = prepare_datasets(settings(sources=[{"path": str(path)}]), word_tokenizer)
    kept = prepare_datasets(settings(sources=[{"path": str(path), "columns": ["text"]}]), word_tokenizer)
    assert every.stats["sources"]["both"]["format"] == "prompt_completion"
    assert kept.stats["sources"]["both"]["format"] == "text"
    cfg = compose([f"data.sources=[{{path:{path},columns:[text]}}]"])  # once "Cannot merge DictConfig with ListConfig"
    assert list(cfg.data.sources[0].columns) == ["text"]
    with pytest.raises(DataError, match=r"columns=\['conversations'\] keeps \['conversations'\], which the data does"):
        prepare_datasets(settings(sources=[{"path": str(path), "columns": ["conversations"]}]), word_tokenizer)


def test_system_prompt_goes_first_where_a_conversation_has_none(word_tokenizer, tmp_path):
    rows = [conversation("Hi", "Bye"), conversation("Hi", "Bye", system="Be brief")] * 10
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    data = prepare_datasets(settings(sources=[{"path": str(path)}], chat_template="chatml", eval_split_size=4,
                                     system_prompt="You are helpful"), word_tokenizer)  # fmt: skip
    texts = set(_texts(data, word_tokenizer))
    assert texts == {"<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                     "<|im_start|>assistant\nBye<|im_end|>\n",
                     "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                     "<|im_start|>assistant\nBye<|im_end|>\n"}  # fmt: skip
    systems = {example["prompt"][0]["content"] for example in data.heldout_examples}
    assert {example["prompt"][0]["role"] for example in data.heldout_examples} == {"system"}
    assert systems <= {"You are helpful", "Be brief"}


@pytest.mark.parametrize(
    "template, line",
    [("{%- for m in messages %}\n{{ m.content }\n{%- endfor %}", 2), ("{{ bos_token }}\n{%- if x %}\n{{ x }}", 3)],
)
def test_a_chat_template_string_that_does_not_parse_names_the_key_and_line(template, line, tmp_path):
    with pytest.raises(ConfigError, match=rf"data.chat_template: the chat template is not valid Jinja, line {line} "):
        settings(sources=_files(tmp_path, {"a": 1}), chat_template=template)
    path = tmp_path / "broken.jinja"
    path.write_text(template)
    with pytest.raises(
        ConfigError, match=rf"data.chat_template={path}: the chat template is not valid Jinja, line {line}"
    ):
        settings(sources=_files(tmp_path, {"a": 1}), chat_template=str(path))
