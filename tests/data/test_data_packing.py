"""Packing: bins that fit, positions that restart, fill rate, and the loss of a packed batch equal to unpacked."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from sft_exp.data import SFTCollator
from sft_exp.data.packing import bfd_bins, pack_bfd, pack_wrapped
from sft_exp.paths import PACKAGE_DIR
from tests.helpers import tiny_causal_lm


def _examples(lengths: list[int], seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for i, length in enumerate(lengths):
        ids = rng.integers(5, 100, size=length).tolist()
        labels = [-100 if t < length // 2 else token for t, token in enumerate(ids)]
        rows.append(
            {"input_ids": ids, "labels": labels, "position_ids": list(range(length)), "source_ids": [i % 3] * length}
        )
    return datasets.Dataset.from_list(rows)


def test_bfd_bins_fit_and_use_each_example_once():
    lengths = np.random.default_rng(1).integers(1, 100, size=500)
    bins = bfd_bins(lengths, 128)
    assert sorted(i for members in bins for i in members) == list(range(500))
    assert max(lengths[members].sum() for members in bins) <= 128
    assert lengths.sum() / (len(bins) * 128) > 0.95


def test_bfd_puts_each_example_in_the_fullest_row_with_room():
    assert bfd_bins(np.array([6, 5, 4, 3, 2]), 10) == [[0, 2], [1, 3, 4]]


def test_packed_rows_restart_positions_and_hide_each_examples_first_label():
    examples = _examples([5, 3, 4, 2])
    packed = pack_bfd(examples, 8)
    assert packed["position_ids"] == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1]]
    assert packed["input_ids"][0] == examples[0]["input_ids"] + examples[1]["input_ids"]
    assert packed["source_ids"][0] == [0] * 5 + [1] * 3
    assert packed["labels"][0][0] == -100 and packed["labels"][0][5] == -100
    assert packed["labels"][0][1:5] == examples[0]["labels"][1:]


def test_wrapped_cuts_rows_at_max_length_and_restarts_positions():
    examples = _examples([5, 6])
    packed = pack_wrapped(examples, 4)
    assert [len(ids) for ids in packed["input_ids"]] == [4, 4, 3]
    assert sum(packed["input_ids"], []) == examples[0]["input_ids"] + examples[1]["input_ids"]
    assert packed["position_ids"] == [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2]]


def test_bfd_fills_97_percent_of_the_demo_data_at_512():
    from transformers import AutoTokenizer

    from sft_exp.data import DataSettings, prepare_datasets

    demo, tokenizer_dir = PACKAGE_DIR / "assets" / "demo" / "train.jsonl", PACKAGE_DIR / "assets" / "tokenizer"
    if not (demo.is_file() and tokenizer_dir.is_dir()):
        pytest.skip("the demo assets are not built")
    settings = DataSettings(sources=[str(demo)], max_length=512, assistant_only_loss=True, packing=True, seed=0)
    data = prepare_datasets(settings, AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    assert data.stats["packing"]["fill_rate"] >= 0.97


def _tiny_model(attn_implementation: str):
    return tiny_causal_lm(attn_implementation=attn_implementation).eval()


def _mean_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token loss over trained targets (labels shifted here, as the trainer does).

    use_cache=False matters: with a cache, transformers 5 skips finding packed sequences in position_ids.
    """
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.float()
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return losses[targets != -100].mean()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(attn_implementation):
    model = _tiny_model(attn_implementation)
    examples = _examples([37, 12, 50, 8, 29, 44, 3, 21])
    unpacked = SFTCollator(pad_token_id=0)(list(examples))
    packed_rows = list(pack_bfd(examples, 64))
    packed = SFTCollator(pad_token_id=0, padding_free=True)(packed_rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    torch.testing.assert_close(_mean_loss(model, packed), _mean_loss(model, unpacked), atol=1e-5, rtol=0)

    # Control: the same packed tokens with positions that do not restart let examples see each other.
    crossed = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    assert abs(_mean_loss(model, crossed) - _mean_loss(model, unpacked)) > 1e-3
