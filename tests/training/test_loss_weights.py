"""Per-message loss weights in the loss: weight 2 is the message duplicated, weight 0 the message removed.

Rows go through the real pipeline (prepare_datasets with a chat template, the collator) into sft_forward
on a tiny real model; the references are plain unweighted data, so a wrong weighting cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from sft_exp.data import SFTCollator, prepare_datasets
from tests.data.builders import conversation, make_word_tokenizer, settings, write_jsonl
from tests.helpers import sft_loss_and_grads, tiny_causal_lm


def _rows(tmp_path, rows, name):
    tokenizer = make_word_tokenizer()
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    data = prepare_datasets(
        settings(sources=[{"path": str(path)}], chat_template="chatml", assistant_only_loss=True), tokenizer
    )
    return tokenizer, [data.train[i] for i in range(len(data.train))]


def _loss_and_grads(tmp_path, rows, name, padding_free=False):
    tokenizer, prepared = _rows(tmp_path, rows, name)
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32)
    batch = SFTCollator(tokenizer.pad_token_id, padding_free=padding_free)(prepared)
    return sft_loss_and_grads(model, batch)


def _two_turns(**second) -> dict:
    row = conversation("What is two plus two ?", "Four .", "And three ?", "Six .")
    row["messages"][3].update(second)
    return row


def _assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-5, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("padding_free", [False, True])
def test_weight_two_is_the_message_duplicated_in_the_data(tmp_path, padding_free):
    weighted = _loss_and_grads(tmp_path, [_two_turns(weight=2)], "weighted", padding_free)
    # The same message once more: a second copy of the row in which only that message is trained.
    copy = _two_turns()
    copy["messages"][1]["train"] = False
    duplicated = _loss_and_grads(tmp_path, [_two_turns(), copy], "duplicated", padding_free)
    _assert_same(weighted, duplicated)
    plain = _loss_and_grads(tmp_path, [_two_turns()], "plain", padding_free)
    assert not torch.allclose(plain[0].loss, weighted[0].loss)  # the weight does change the loss


def test_weight_zero_is_the_message_removed_from_the_loss(tmp_path):
    removed = _loss_and_grads(tmp_path, [_two_turns(weight=0)], "zero")
    # A causal model: the first reply's loss does not depend on what follows it, so the conversation
    # cut after the first reply trains exactly the first reply.
    cut = conversation("What is two plus two ?", "Four .")
    _assert_same(removed, _loss_and_grads(tmp_path, [cut], "cut"))


def test_fractional_weights_keep_the_loss_a_mean_per_weighted_token(tmp_path):
    """Every message at weight 0.5 gives the loss of the unweighted rows: a mean per weighted token."""
    row = _two_turns(weight=0.5)
    row["messages"][1]["weight"] = 0.5
    _assert_same(_loss_and_grads(tmp_path, [row], "half"), _loss_and_grads(tmp_path, [_two_turns()], "ones"))


def test_every_weight_one_is_bitwise_the_unweighted_loss(tmp_path):
    """TRL parity holds where every weight is 1: the weight column changes nothing, to the bit."""
    tokenizer, prepared = _rows(tmp_path, [_two_turns(), conversation("Hi", "Hello")], "ones")
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32)
    with_weights = SFTCollator(tokenizer.pad_token_id)(prepared)
    without = {k: v for k, v in with_weights.items() if k != "loss_weights"}
    (out_a, grads_a), (out_b, grads_b) = sft_loss_and_grads(model, with_weights), sft_loss_and_grads(model, without)
    assert torch.equal(out_a.loss, out_b.loss)
    assert all(torch.equal(grads_a[name], grads_b[name]) for name in grads_a)


def test_the_trainer_divides_an_accumulated_step_by_its_summed_weights(tmp_path):
    """Two micro-batches of one row each: the step's gradient is that of both rows in one batch."""
    import functools

    from sft_exp.training.trainer import SFTTrainer

    tokenizer, prepared = _rows(tmp_path, [_two_turns(weight=3), conversation("Hi", "Hello")], "accumulated")
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=32)
    collator = SFTCollator(tokenizer.pad_token_id)
    _, expected = sft_loss_and_grads(model, collator(prepared))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    from datasets import Dataset

    trainer = SFTTrainer(
        model=model, train_dataset=Dataset.from_list(prepared), data_collator=collator, output_dir=str(tmp_path / "run"),
        optimizer_factory=functools.partial(torch.optim.SGD, lr=1.0), max_steps=1, per_device_train_batch_size=1,
        gradient_accumulation_steps=2, max_grad_norm=0.0, save_strategy="no", logging_steps=1, report_to=[],
    )  # fmt: skip
    trainer.train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), expected[name], rtol=1e-4, atol=1e-6, msg=name)
