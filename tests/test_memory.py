"""Memory strategies change where activations live, never the gradients."""
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from sft_exp.loss import NLLLoss
from sft_exp.memory import ActivationOffloading, GradientCheckpointing, NoMemoryStrategy, OffloadHooks
from sft_exp.sft_forward import sft_forward


def tiny_model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def batch():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 128, (2, 24), generator=g)
    labels = input_ids.clone()
    labels[:, :8] = -100
    return dict(input_ids=input_ids, labels=labels, attention_mask=torch.ones_like(input_ids),
                position_ids=torch.arange(24).expand(2, 24))


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without CUDA")
def test_offload_without_cuda_warns_once_and_still_trains(reference_grads, caplog):
    model = tiny_model()
    strategy = ActivationOffloading(with_checkpointing=False)
    with caplog.at_level(logging.WARNING, logger="sft_exp.memory"):
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
        torch.cuda.reset_peak_memory_stats()
        with strategy.forward_context():
            out = sft_forward(model, data, NLLLoss())
        out.loss.backward()
        return {n: p.grad.cpu() for n, p in model.named_parameters()}, torch.cuda.max_memory_allocated()

    ref, _ = run(GradientCheckpointing())
    got, _ = run(ActivationOffloading(min_offload_bytes=1024, use_streams=use_streams))
    assert_same(got, ref)
