"""Padding-free batches: the same loss, metrics and gradients as padded ones, and no attention across examples."""

from __future__ import annotations

import datasets
import pytest
import torch

from sft_exp.data.collator import SFTCollator, collator_for
from sft_exp.data.packing import pack_bfd
from sft_exp.errors import ConfigError
from sft_exp.models.attention import register as register_varlen_sdpa
from sft_exp.training.forward import sft_forward
from sft_exp.training.losses import NLLLoss
from tests.helpers import prepared_rows, sft_loss_and_grads, tiny_causal_lm

register_varlen_sdpa()

VOCAB = 128


def _examples(lengths, seed=0):
    return prepared_rows(lengths, VOCAB, seed)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "sdpa_varlen"])
@pytest.mark.parametrize("layout", ["one_row", "packed_rows"])
def test_padding_free_equals_padded_through_sft_forward(attn_implementation, layout):
    model = tiny_causal_lm(vocab_size=VOCAB, attn_implementation=attn_implementation)
    rows = _examples([23, 9, 31, 5, 17, 12])
    padded = SFTCollator(pad_token_id=0)(rows)
    if layout == "one_row":
        free = SFTCollator(pad_token_id=0, padding_free=True)(rows)
        assert free["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))  # not one pad token
    else:
        packed = list(pack_bfd(datasets.Dataset.from_list(rows), 40))
        free = SFTCollator(pad_token_id=0, padding_free=True, separate_rows=True)(packed)
        assert free["input_ids"].shape[0] == len(packed) > 1
    assert "attention_mask" not in free

    (p, p_grads), (f, f_grads) = sft_loss_and_grads(model, padded), sft_loss_and_grads(model, free)
    assert int(f.num_supervised) == int(p.num_supervised)
    torch.testing.assert_close(f.loss, p.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(f.entropy_sum, p.entropy_sum, rtol=1e-5, atol=1e-4)
    for name, grad in p_grads.items():
        torch.testing.assert_close(f_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "sdpa_varlen"])
def test_padding_free_examples_do_not_attend_to_each_other(attn_implementation):
    """Changing the first example's tokens leaves the second example's loss exactly as it was."""
    model = tiny_causal_lm(vocab_size=VOCAB, attn_implementation=attn_implementation)
    first, second = _examples([15, 11])
    other_first = _examples([15], seed=1)[0]
    collate = SFTCollator(pad_token_id=0, padding_free=True)

    def second_loss(rows):
        batch = collate(rows)
        batch["source_ids"] = torch.tensor([[0] * 15 + [1] * 11])  # source 1 = the second example
        with torch.no_grad():
            return sft_forward(model, batch, NLLLoss(), num_sources=2).source_loss_sum[1]

    alone = sft_forward(model, collate([second]), NLLLoss()).nll_sum
    torch.testing.assert_close(second_loss([first, second]), alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(second_loss([other_first, second]), alone, rtol=0, atol=1e-5)


def test_packed_rows_pad_their_tail_as_an_untrained_example():
    rows = _examples([7, 4])
    batch = SFTCollator(pad_token_id=0, padding_free=True, separate_rows=True, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # the pad restarts its positions
    assert (batch["labels"][1, 4:] == -100).all() and (batch["source_ids"][1, 4:] == -1).all()


@pytest.mark.parametrize(
    "attn, packing, padding_free, expected",
    [
        ("sdpa", False, None, (False, False)),  # sdpa: one concatenated row would make attention quadratic in the batch
        ("flash_attention_2", False, None, (True, False)),  # varlen kernel: padding-free by default, one row
        ("sdpa", True, None, (True, True)),  # packed rows stay rows under sdpa
        ("flash_attention_2", True, None, (True, False)),
        ("sdpa", False, True, (True, False)),  # asked for explicitly
        ("sdpa_varlen", False, None, (True, False)),  # what sft_exp loads for sdpa: attention per example, one row
        ("sdpa_varlen", True, None, (True, False)),
        ("sdpa_varlen", False, False, (False, False)),  # data.padding_free=false still pads
    ],
)
def test_collator_for_picks_the_layout(attn, packing, padding_free, expected):
    collate = collator_for(0, packing=packing, padding_free=padding_free, attn_implementation=attn)
    assert (collate.padding_free, collate.separate_rows) == expected


def test_collator_for_refuses_attention_that_cannot_separate_examples():
    with pytest.raises(ConfigError, match="data.padding_free=true with model.attn_implementation=paged_attention"):
        collator_for(0, packing=False, padding_free=True, attn_implementation="paged_attention")
