"""Memory strategies change where activations live, never the gradients."""

import logging

import pytest
import torch

from sft_exp.training.forward import sft_forward
from sft_exp.training.losses import NLLLoss
from sft_exp.training.memory import ActivationOffloading, GradientCheckpointing, NoMemoryStrategy, OffloadHooks
from tests.helpers import tiny_causal_lm


def tiny_model():
    return tiny_causal_lm(vocab_size=128, hidden_size=64)


def batch():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 128, (2, 24), generator=g)
    labels = input_ids.clone()
    labels[:, :8] = -100
    return dict(
        input_ids=input_ids,
        labels=labels,
        attention_mask=torch.ones_like(input_ids),
        position_ids=torch.arange(24).expand(2, 24),
    )


def step_grads(model, context):
    model.train()
    model.zero_grad(set_to_none=True)
    with context:
        out = sft_forward(model, batch(), NLLLoss(chunk_size=16))
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def reference_grads():
    return step_grads(tiny_model(), NoMemoryStrategy().forward_context())


def assert_same(grads, reference):
    assert grads.keys() == reference.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def count_layer_forwards(model):
    calls = []
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_checkpointing_recomputes_layers_and_keeps_gradients(reference_grads):
    model = tiny_model()
    strategy = GradientCheckpointing()
    strategy.apply(model)
    calls = count_layer_forwards(model)
    assert_same(step_grads(model, strategy.forward_context()), reference_grads)
    assert len(calls) == 2  # forward, then the recompute in backward (a pre-hook: recompute stops early)


@pytest.mark.parametrize("with_checkpointing", [True, False])
def test_offload_hooks_move_saved_tensors_and_keep_gradients(reference_grads, with_checkpointing):
    model = tiny_model()
    strategy = ActivationOffloading(min_offload_bytes=2048, with_checkpointing=with_checkpointing)
    strategy.apply(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # The CPU stand-in for a device: tensors are copied out in forward and back in backward.
    hooks = OffloadHooks(2048, use_streams=False, param_ptrs=params, offload_cpu_tensors=True)
    assert_same(step_grads(model, hooks), reference_grads)
    moved = [cpu for cpu, _ in hooks.offloaded.values()]
    assert moved and all(t.numel() * t.element_size() >= 2048 for t in moved)
    assert hooks.fetched == set(hooks.offloaded)  # every offloaded tensor was brought back
    if with_checkpointing:  # only the checkpointed layers' inputs (and the final norm's) leave
        assert len(moved) <= 2 * model.config.num_hidden_layers + 2


def test_offload_leaves_parameters_and_small_tensors(reference_grads):
    model = tiny_model()
    hooks = OffloadHooks(1 << 30, use_streams=False, param_ptrs=set(), offload_cpu_tensors=True)
    assert_same(step_grads(model, hooks), reference_grads)
    assert not hooks.offloaded
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooks = OffloadHooks(0, use_streams=False, param_ptrs=params, offload_cpu_tensors=True)
    step_grads(model, hooks)
    assert hooks.offloaded
    assert not any(cpu.untyped_storage().data_ptr() in params for cpu, _ in hooks.offloaded.values())


def _param_storages(model) -> set:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


class DeviceBytes(OffloadHooks):
    """OffloadHooks that also count the saved activation bytes left where they were made (not parameters)."""

    def __init__(self, min_bytes: int, model):
        super().__init__(min_bytes, use_streams=False, param_ptrs=_param_storages(model), offload_cpu_tensors=True)
        self.left = 0

    def _pack(self, t):
        handle = super()._pack(t)
        if isinstance(handle, torch.Tensor) and t.untyped_storage().data_ptr() not in self.param_ptrs:
            self.left += t.numel() * t.element_size()
        return handle


def test_offload_lowers_the_saved_activation_bytes_left_on_the_device(reference_grads):
    """The CPU stand-in of a device: what the autograd graph keeps outside the offloaded copies."""
    baseline = tiny_model()
    keep_all = DeviceBytes(1 << 40, baseline)  # moves nothing: every saved activation stays
    step_grads(baseline, keep_all)
    model = tiny_model()
    offload = DeviceBytes(2048, model)
    assert_same(step_grads(model, offload), reference_grads)
    moved = sum(cpu.numel() * cpu.element_size() for cpu, _ in offload.offloaded.values())
    print(f"saved activation bytes left: none {keep_all.left}, offload {offload.left} ({moved} moved)")
    assert keep_all.left > 0 and offload.left < 0.5 * keep_all.left
    assert offload.left + moved == keep_all.left  # the same activations, only moved


def _bytes_held_after_forward(strategy) -> int:
    """CPU bytes allocated during forward and still held when it returns (the saved activations), by torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny_model()
    strategy.apply(model)
    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with strategy.forward_context():
            out = sft_forward(model, batch(), NLLLoss(chunk_size=16))
    out.loss.backward()  # the graph is alive until here
    return sum(event.self_cpu_memory_usage for event in prof.key_averages())


def test_checkpointing_lowers_the_memory_held_between_forward_and_backward():
    none, checkpointing = (
        _bytes_held_after_forward(NoMemoryStrategy()),
        _bytes_held_after_forward(GradientCheckpointing()),
    )
    print(f"bytes held after forward: none {none}, checkpointing {checkpointing} ({checkpointing / none:.2f}x)")
    assert none > 0 and checkpointing < 0.5 * none


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without CUDA")
def test_offload_without_cuda_warns_once_and_still_trains(reference_grads, caplog):
    model = tiny_model()
    strategy = ActivationOffloading(with_checkpointing=False)
    with caplog.at_level(logging.WARNING, logger="sft_exp.training.memory"):
        strategy.apply(model)
    assert len(caplog.records) == 1 and "saves nothing" in caplog.text
    assert_same(step_grads(model, strategy.forward_context()), reference_grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("use_streams", [True, False])
def test_cuda_offload_keeps_gradients_and_lowers_memory(use_streams):
    def run(strategy):
        model = tiny_model().cuda()
        strategy.apply(model)
        data = {k: v.cuda() for k, v in batch().items()}
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with strategy.forward_context():
            out = sft_forward(model, data, NLLLoss())
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before  # what the graph keeps on the GPU until backward
        out.loss.backward()
        return {n: p.grad.cpu() for n, p in model.named_parameters()}, held

    ref, checkpointing_held = run(GradientCheckpointing())
    got, offload_held = run(ActivationOffloading(min_offload_bytes=1024, use_streams=use_streams))
    assert_same(got, ref)
    _, none_held = run(NoMemoryStrategy())
    assert offload_held < checkpointing_held < none_held, (offload_held, checkpointing_held, none_held)
