"""examples.parquet: each example's loss and token accuracy per epoch, named by its source and row."""

from __future__ import annotations

import functools

import pandas as pd
import pytest
import torch

from sft_exp.data import SFTCollator, prepare_datasets
from sft_exp.training.trainer import SFTTrainer
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl
from tests.helpers import sft_loss_and_grads, tiny_causal_lm

REPLIES = ["Four .", "Six .", "Paris", "Hello there", "Bye", "It s sunny"]


def _prepare(tmp_path, packing):
    tokenizer = make_word_tokenizer()
    first = write_jsonl(tmp_path / "first.jsonl", [conversation("What is two plus two ?", r) for r in REPLIES[:4]])
    second = write_jsonl(tmp_path / "second.jsonl", [conversation("Hi", r) for r in REPLIES[4:]])
    data = prepare_datasets(
        settings(
            sources=[{"path": str(first)}, {"path": str(second)}],
            chat_template="chatml",
            assistant_only_loss=True,
            packing=packing,
            max_length=64,
        ),
        tokenizer,
    )
    return tokenizer, data


@pytest.mark.parametrize("packing", [False, True])
def test_the_ledger_records_each_examples_loss_per_epoch(tmp_path, packing):
    tokenizer, data = _prepare(tmp_path, packing)
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32)
    collator = SFTCollator(tokenizer.pad_token_id, padding_free=packing)
    trainer = SFTTrainer(
        model=model, train_dataset=data.train, data_collator=collator, output_dir=str(tmp_path / "run" / "checkpoints"),
        source_names=data.source_names, optimizer_factory=functools.partial(torch.optim.SGD, lr=0.0),
        num_train_epochs=2, per_device_train_batch_size=2, save_strategy="no", example_ledger=True,
    )  # fmt: skip
    trainer.train()
    ledger = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    assert list(ledger.columns) == ["split", "epoch", "step", "source", "row_id", "loss", "token_accuracy", "tokens"]
    assert sorted(zip(ledger["epoch"], ledger["source"], ledger["row_id"])) == sorted(
        (epoch, source, row)
        for epoch in (0.0, 1.0)
        for source, rows in (("first", 4), ("second", 2))
        for row in range(rows)
    )
    # lr=0: the model does not change, so each example's loss is that of the example scored alone.
    source_rows = {
        "first": _rows(tmp_path / "first.jsonl", tokenizer),
        "second": _rows(tmp_path / "second.jsonl", tokenizer),
    }
    for record in ledger.itertuples():
        out, _ = sft_loss_and_grads(
            model, SFTCollator(tokenizer.pad_token_id)([source_rows[record.source][record.row_id]])
        )
        assert record.tokens == int(out.num_supervised)
        assert record.loss == pytest.approx(float(out.nll_sum) / record.tokens, rel=1e-4)
        assert record.token_accuracy == pytest.approx(float(out.num_correct) / record.tokens)


def _rows(path, tokenizer) -> list[dict]:
    data = prepare_datasets(
        settings(sources=[{"path": str(path)}], chat_template="chatml", assistant_only_loss=True), tokenizer
    )
    rows = sorted((data.train[i] for i in range(len(data.train))), key=lambda row: row["example_ids"][0])
    return rows


def test_no_ledger_by_default(tmp_path):
    tokenizer, data = _prepare(tmp_path, packing=False)
    trainer = SFTTrainer(
        model=tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32), train_dataset=data.train,
        data_collator=SFTCollator(tokenizer.pad_token_id), output_dir=str(tmp_path / "run" / "checkpoints"),
        source_names=data.source_names, max_steps=1, save_strategy="no",
    )  # fmt: skip
    trainer.train()
    assert not (tmp_path / "run" / "examples.parquet").exists()


def test_each_evaluation_adds_its_examples_at_its_step(tmp_path):
    tokenizer, data = _prepare(tmp_path, packing=False)
    trainer = SFTTrainer(
        model=tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32), train_dataset=data.train,
        eval_dataset=data.train, data_collator=SFTCollator(tokenizer.pad_token_id),
        output_dir=str(tmp_path / "run" / "checkpoints"), source_names=data.source_names, max_steps=2,
        per_device_train_batch_size=2, eval_steps=1, save_strategy="no", example_ledger=True,
    )  # fmt: skip
    trainer.train()
    ledger = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    evaluated = ledger[ledger["split"] == "eval"]
    assert sorted(evaluated["step"].unique()) == [1.0, 2.0]
    assert len(evaluated) == 2 * len(data.train) and evaluated["epoch"].isna().all()
    assert (ledger[ledger["split"] == "train"]["step"].isna()).all()


def test_a_run_with_the_ledger_writes_examples_parquet(tmp_path):
    from tests.helpers import run_sft, tiny_run

    run_dir = tmp_path / "run"
    result = run_sft(
        *tiny_run(steps=2, train_rows=8, save_steps=100),
        "evals=none",
        f"run_dir={run_dir}",
        "trainer.example_ledger=true",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ledger = pd.read_parquet(run_dir / "examples.parquet")
    train = ledger[ledger["split"] == "train"]
    assert set(train["source"]) == {"demo"} and train["row_id"].between(0, 7).all() and len(train) == 8
    assert (ledger["tokens"] > 0).all() and ledger["loss"].notna().all()
