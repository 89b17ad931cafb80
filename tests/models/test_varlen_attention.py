"""sdpa_varlen: SDPA per example of a padding-free row, and plain sdpa for every other batch."""

from __future__ import annotations

import pytest
import torch

from sft_exp.data.collator import SFTCollator
from sft_exp.models.attention import register, use_varlen_sdpa
from sft_exp.models.loader import ModelLoader
from sft_exp.training.memory import GradientCheckpointing
from tests.helpers import prepared_rows, sft_loss_and_grads, tiny_causal_lm

VOCAB = 128
LENGTHS = [23, 9, 31, 1, 17, 12]


def _query_lengths_seen_by_sdpa(monkeypatch) -> list:
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        seen.append(query.shape[-2])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
@pytest.mark.parametrize(
    "model_type, extra", [("qwen2", {}), ("llama", {}), ("mistral", {"sliding_window": 6})]
)  # windows shorter than examples
def test_padding_free_row_equals_the_padded_batch_under_plain_sdpa(monkeypatch, model_type, extra, checkpointing):
    """Same loss and gradients as transformers' own sdpa on the padded batch; SDPA never sees more than one example."""
    reference = tiny_causal_lm(model_type, vocab_size=VOCAB, **extra)
    model = tiny_causal_lm(model_type, vocab_size=VOCAB, **extra)
    assert use_varlen_sdpa(model) and model.config._attn_implementation == "sdpa_varlen"
    if checkpointing:  # the recomputed forward in backward has no sft_forward around it: boundaries come as kwargs
        GradientCheckpointing().apply(model)
        GradientCheckpointing().apply(reference)
    rows = prepared_rows(LENGTHS, VOCAB)
    expected, expected_grads = sft_loss_and_grads(reference, SFTCollator(pad_token_id=0)(rows))

    seen = _query_lengths_seen_by_sdpa(monkeypatch)
    out, grads = sft_loss_and_grads(model, SFTCollator(pad_token_id=0, padding_free=True)(rows))

    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert seen and max(seen) == max(LENGTHS)  # one example at a time: never the (T, T) row of all of them
    assert sorted(set(seen)) == sorted(set(LENGTHS))


def test_generation_with_left_padding_is_plain_sdpa():
    """Task evaluation generates with an attention_mask and a KV cache: sdpa_varlen must be sdpa there."""
    reference, model = tiny_causal_lm(vocab_size=VOCAB), tiny_causal_lm(vocab_size=VOCAB)
    use_varlen_sdpa(model)
    prompts = torch.tensor([[0, 0, 0, 5, 6, 7], [9, 8, 7, 6, 5, 4]])
    mask = (torch.arange(6) >= torch.tensor([[3], [0]])).long()
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompts, **kwargs), reference.generate(prompts, **kwargs))


def test_model_loader_gives_sdpa_varlen_for_sdpa_and_saves_a_plain_config(tmp_path):
    loader = ModelLoader(
        init_config=dict(
            model_type="qwen2",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        attn_implementation="sdpa",
    )
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    model = loader.load_model(AutoTokenizer.from_pretrained(str(asset_path("tokenizer"))))
    assert model.config._attn_implementation == "sdpa_varlen"
    model.save_pretrained(tmp_path)
    assert "sdpa_varlen" not in (tmp_path / "config.json").read_text()  # elsewhere it loads with its own default


def test_asked_for_by_name():
    register()
    model = tiny_causal_lm(vocab_size=VOCAB, attn_implementation="sdpa_varlen")
    assert model.config._attn_implementation == "sdpa_varlen"


def test_example_spans_are_read_again_for_a_new_or_changed_position_ids_tensor():
    from sft_exp.models.attention import _example_spans

    positions = torch.tensor([[0, 1, 2, 0, 1]])
    assert _example_spans(positions, 1) == [[(0, 3), (3, 5)]]
    assert _example_spans(positions, 2) == [[(0, 3), (3, 5)]] * 2
    positions[0, 4] = 0  # in place: the cached spans are stale
    assert _example_spans(positions, 1) == [[(0, 3), (3, 4), (4, 5)]]
    assert _example_spans(torch.tensor([[0, 1, 2, 3, 4]]), 1) == [[(0, 5)]]
