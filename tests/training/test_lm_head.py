"""The chunked LM head against full logits: values, metrics and gradients."""

import pytest
import torch

from sft_exp.training.lm_head import HeadSpec, chunked_head


def full_logits(hidden, weight, bias, scale, softcap):
    z = torch.nn.functional.linear(hidden, weight, bias) * scale
    return softcap * torch.tanh(z / softcap) if softcap else z


def make_case(n=37, h=16, v=53, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(v, h, generator=g).mul_(0.5).requires_grad_()
    bias = torch.randn(v, generator=g).requires_grad_() if with_bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, bias, labels


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("scale,softcap", [(1.0, None), (0.25, None), (1.0, 3.0), (2.0, 1.5)])
def test_matches_full_logits(chunk_size, scale, softcap):
    hidden, weight, bias, labels = make_case()
    spec = HeadSpec(weight, bias, scale, softcap)
    upstream = torch.randn(labels.shape[0])  # arbitrary per-token loss weights

    logp, entropy, top1 = chunked_head(hidden, labels, spec, chunk_size)
    (logp * upstream).sum().backward()
    got = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None

    ref_logp_all = torch.log_softmax(full_logits(hidden, weight, bias, scale, softcap), -1)
    ref_logp = ref_logp_all.gather(1, labels[:, None]).squeeze(1)
    ref_entropy = -(ref_logp_all.exp() * ref_logp_all).sum(-1)
    (ref_logp * upstream).sum().backward()

    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(top1, ref_logp_all.argmax(-1) == labels)
    for g, t in zip(got, (hidden, weight, bias)):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-5)


def test_top1_is_counted_when_label_is_argmax():
    hidden, weight, _, _ = make_case(n=20, with_bias=False)
    labels = (hidden @ weight.t()).argmax(-1)
    _, _, top1 = chunked_head(hidden, labels, HeadSpec(weight, None), 7)
    assert top1.all()


def test_no_rows_gives_empty_outputs_and_zero_grads():
    hidden, weight, bias, labels = make_case(n=0)
    logp, entropy, top1 = chunked_head(hidden, labels, HeadSpec(weight, bias), 4)
    assert logp.shape == entropy.shape == top1.shape == (0,)
    logp.sum().backward()
    assert weight.grad is not None and not weight.grad.any()


def test_entropy_and_top1_carry_no_gradient():
    hidden, weight, bias, labels = make_case()
    logp, entropy, top1 = chunked_head(hidden, labels, HeadSpec(weight, bias), 8)
    assert logp.requires_grad and not entropy.requires_grad and not top1.requires_grad


def test_frozen_weight_gets_no_gradient():
    hidden, weight, _, labels = make_case(with_bias=False)
    weight.requires_grad_(False)
    logp, _, _ = chunked_head(hidden, labels, HeadSpec(weight, None), 8)
    logp.sum().backward()
    assert weight.grad is None and hidden.grad is not None
