"""The chunked head under DeepSpeed ZeRO-3: it gathers lm_head.weight itself, in forward and in backward.

deepspeed needs CUDA and is not installed here, so a minimal stand-in plays ZeRO-3's part: outside
`deepspeed.zero.GatheredParameters` a partitioned parameter holds no data (as on a ZeRO-3 rank, where
`param.data` is an empty tensor); inside, its full value. The real library runs in benchmarks/gpu_check.py.
"""
from __future__ import annotations

import sys
import types

import torch

from sft_exp.training.lm_head import HeadSpec, chunked_head


class _GatheredParameters:
    """What deepspeed.zero.GatheredParameters(params, modifier_rank=None) does to a partitioned parameter."""

    entered = 0

    def __init__(self, params, modifier_rank=None):
        assert modifier_rank is None  # read-only gathering: nothing is broadcast back
        self.params = list(params)

    def __enter__(self):
        type(self).entered += 1
        for p in self.params:
            p.data = p.full_value

    def __exit__(self, *exc):
        for p in self.params:
            p.data = torch.empty(0, dtype=p.dtype)


def _partition(param: torch.nn.Parameter) -> None:
    param.full_value = param.data.clone()
    param.ds_id = 0
    param.data = torch.empty(0, dtype=param.dtype)


def test_head_gathers_a_zero3_partitioned_weight_in_forward_and_backward(monkeypatch):
    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=_GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    labels = torch.randint(0, 41, (23,))
    weight = torch.nn.Parameter(torch.randn(41, 16))

    def loss_and_grads(w):
        hidden.grad = None
        logp, _, _ = chunked_head(hidden, labels, HeadSpec(w, None), chunk_size=8)
        (-logp.sum()).backward()
        return logp.detach(), hidden.grad.clone(), w.grad.clone()

    expected = loss_and_grads(weight)
    sharded = torch.nn.Parameter(weight.detach().clone())
    _partition(sharded)
    _GatheredParameters.entered = 0
    got = loss_and_grads(sharded)
    assert _GatheredParameters.entered == 2  # forward and backward, each for its own pass
    assert sharded.data.numel() == 0  # partitioned again afterwards
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_plain_parameters_are_not_gathered(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # importing deepspeed would fail: it must not be tried
    weight = torch.nn.Parameter(torch.randn(7, 4))
    logp, _, _ = chunked_head(torch.randn(3, 4), torch.tensor([1, 2, 3]), HeadSpec(weight, None), chunk_size=2)
    assert logp.shape == (3,)
