"""The minimal path: messages JSONL + chat template -> assistant-only labels, truncation, eval, collator."""

from __future__ import annotations

import pytest
import torch

from sft_exp.data import DataSettings, SFTCollator, prepare_datasets
from sft_exp.data.templates import CHATML
from sft_exp.errors import ConfigError
from tests.data.builders import conversation, settings, supervised_tokens, write_jsonl


def _prepare(tokenizer, tmp_path, rows, eval_rows=None, **values):
    cfg = {"sources": [{"path": str(write_jsonl(tmp_path / "train.jsonl", rows)), "name": "chat"}], **values}
    if eval_rows is not None:
        cfg["eval_sources"] = [{"path": str(write_jsonl(tmp_path / "eval.jsonl", eval_rows)), "name": "chat"}]
    return prepare_datasets(settings(**cfg), tokenizer)


def test_assistant_only_loss_trains_replies_and_their_end_of_turn(word_tokenizer, tmp_path):
    rows = [conversation("What is two plus two ?", "Four .", "And three ?", "Six .", system="Be brief")]
    data = _prepare(word_tokenizer, tmp_path, rows, chat_template="chatml", assistant_only_loss=True)
    row = data.train[0]
    assert supervised_tokens(word_tokenizer, row) == ["Four", " ", ".", "<|im_end|>", "Six", " ", ".", "<|im_end|>"]
    assert row["position_ids"] == list(range(len(row["input_ids"])))
    assert row["source_ids"] == [0] * len(row["input_ids"])
    rendered = word_tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False, chat_template=CHATML)
    assert row["input_ids"] == word_tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_without_assistant_only_loss_every_token_is_trained(word_tokenizer, tmp_path):
    data = _prepare(word_tokenizer, tmp_path, [conversation("Hi", "Hello")], chat_template="chatml")
    row = data.train[0]
    assert row["labels"] == row["input_ids"]


def test_truncation_keeps_the_start_and_drops_rows_left_without_targets(word_tokenizer, tmp_path):
    long_prompt = " ".join(["cat"] * 40)
    rows = [conversation("Hi", "Hello there"), conversation(long_prompt, "Bye")]
    data = _prepare(word_tokenizer, tmp_path, rows, chat_template="chatml", assistant_only_loss=True, max_length=20)
    assert len(data.train) == 1
    assert data.stats["rows_dropped"] == {"no_supervised_tokens": 1}
    assert data.stats["rows_truncated"] == 1


def test_truncated_row_keeps_its_first_tokens(word_tokenizer, tmp_path):
    rows = [conversation("Hi", "cat cat cat cat cat cat cat cat")]
    data = _prepare(word_tokenizer, tmp_path, rows, chat_template="chatml", assistant_only_loss=True, max_length=12)
    full = _prepare(word_tokenizer, tmp_path, rows, chat_template="chatml", assistant_only_loss=True)
    assert data.train[0]["input_ids"] == full.train[0]["input_ids"][:12]
    assert data.train[0]["labels"] == full.train[0]["labels"][:12]


def test_eval_sources_are_prepared_the_same_way_and_give_heldout_examples(word_tokenizer, tmp_path):
    rows = [conversation("Hi", "Hello")] * 3
    eval_rows = [conversation("What is two plus two ?", "Four", "And three ?", "Six")]
    data = _prepare(word_tokenizer, tmp_path, rows, eval_rows, chat_template="chatml", assistant_only_loss=True)
    assert len(data.eval) == 1 and data.source_names == ["chat"]
    assert supervised_tokens(word_tokenizer, data.eval[0]) == ["Four", "<|im_end|>", "Six", "<|im_end|>"]
    assert data.heldout_examples == [{"prompt": eval_rows[0]["messages"][:3], "reference": "Six"}]


def test_padded_collator_pads_labels_positions_and_sources():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2], "source_ids": [0, 0, 0]},
        {"input_ids": [8], "labels": [8], "position_ids": [0], "source_ids": [1]},
    ]
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["source_ids"].tolist() == [[0, 0, 0, -1], [1, -1, -1, -1]]
    assert batch["position_ids"][0].tolist()[:3] == [0, 1, 2]
    assert batch["input_ids"].dtype == torch.long


def test_padding_free_collator_concatenates_and_never_predicts_across_examples():
    rows = [
        {"input_ids": [5, 6], "labels": [5, 6], "position_ids": [0, 1], "source_ids": [0, 0]},
        {"input_ids": [7, 8, 9], "labels": [7, 8, 9], "position_ids": [0, 1, 2], "source_ids": [1, 1, 1]},
    ]
    batch = SFTCollator(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9]]
    assert batch["source_ids"].tolist() == [[0, 0, 1, 1, 1]]


@pytest.mark.parametrize(
    "override, key",
    [
        ({"sources": []}, "data.sources"),
        ({"sources": [{"path": "/no/such/file.jsonl"}]}, "data.sources[0].path"),
        ({"sources": [{"path": "TRAIN", "format": "yaml"}]}, "data.sources[0].format"),
        ({"sources": [{"path": "TRAIN", "weight": 0}]}, "data.sources[0].weight"),
        ({"sources": [{"path": "TRAIN", "format": "text", "columns": {"prompt": "q"}}]}, "data.sources[0].columns"),
        ({"chat_template": "nosuch"}, "data.chat_template"),
        ({"chat_template": "/no/such/template.jinja"}, "data.chat_template"),
        ({"max_length": 1}, "data.max_length"),
        ({"packing_strategy": "greedy"}, "data.packing_strategy"),
        ({"on_bad_row": "ignore"}, "data.on_bad_row"),
        ({"num_proc": 0}, "data.num_proc"),
        ({"eval_split_size": -1}, "data.eval_split_size"),
        ({"sources": [{"path": "TRAIN", "eval_path": "/no/such/eval.jsonl"}]}, "data.sources[0].eval_path"),
        ({"sources": [{"path": "TRAIN", "eval_max_samples": 8}]}, "data.sources[0].eval_max_samples"),
        (
            {"sources": [{"path": "TRAIN", "eval_path": "TRAIN", "eval_max_samples": 0}]},
            "data.sources[0].eval_max_samples",
        ),
        ({"eval_sources": [{"path": "TRAIN", "eval_path": "TRAIN"}]}, "data.eval_sources[0].eval_path"),
        ({"seed": "42"}, "data.seed"),
        ({"sources": [{"path": "TRAIN", "name": "a"}, {"path": "TRAIN", "name": "a"}]}, "data.sources[1].name"),
        ({"completion_only_loss": True, "sources": [{"path": "TRAIN", "format": "messages"}]}, "completion_only_loss"),
        ({"sources": [{"path": "TRAIN", "surprise": 1}]}, r"data.sources[0].surprise"),
    ],
)
def test_validate_names_the_bad_key(tmp_path, override, key):
    train = str(write_jsonl(tmp_path / "train.jsonl", [conversation("Hi", "Hello")]))
    cfg = {"sources": [{"path": train}], **override}
    cfg["sources"] = [
        {k: v.replace("TRAIN", train) if isinstance(v, str) else v for k, v in s.items()} for s in cfg["sources"]
    ]
    cfg["eval_sources"] = [
        {k: v.replace("TRAIN", train) if isinstance(v, str) else v for k, v in s.items()}
        for s in cfg.get("eval_sources", [])
    ]
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        DataSettings(**{"seed": 0, **cfg})


def test_validate_accepts_the_composed_demo_config():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import sft_exp.config  # noqa: F401  registers the schemas
    from sft_exp.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config")
    assert isinstance(instantiate(cfg.data), DataSettings)
