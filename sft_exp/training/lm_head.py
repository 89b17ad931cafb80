"""The chunked LM head: log p(label), entropy and top-1 for selected positions, without (N, V) logits.

Rows (supervised positions) are processed `chunk_size` at a time against the full vocabulary, so
at most two (chunk_size, V) float32 buffers exist at once. The backward recomputes each chunk's
logits instead of keeping them. Entropy and top-1 are metrics: they carry no gradient.

The matmuls run in the weight's dtype, or in autocast's (bf16/fp16) when the forward runs under
autocast, as transformers' own lm_head would; softmax, log-sum-exp and sums are float32.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sft_exp.errors import ConfigError


@dataclass(frozen=True)
class HeadSpec:
    """What turns a final hidden state into logits: `softcap(scale * (h @ weight.T + bias))`."""

    weight: Tensor
    bias: Optional[Tensor]
    logit_scale: float = 1.0
    softcap: Optional[float] = None


def _logit_scale(text_config) -> float:
    # Same table as TRL's fused head: Cohere (logit_scale), Falcon-H1 (lm_head_multiplier), Granite
    # and MiniCPM3 divide by logits_scaling, HyperCLOVA X multiplies by it.
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(text_config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(text_config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if text_config.model_type == "hyperclovax" else 1.0 / float(scaling)
    return 1.0


def output_head(model) -> torch.nn.Module:
    """The module that produces logits, unwrapping a PEFT `modules_to_save` copy; refuses LoRA on it."""
    head = model.get_output_embeddings()
    if hasattr(head, "modules_to_save") and hasattr(head, "active_adapter"):  # peft ModulesToSaveWrapper
        active = head.active_adapter
        active = active[0] if isinstance(active, (list, tuple)) else active
        head = head.modules_to_save[active] if active in head.modules_to_save else head.original_module
    if hasattr(head, "lora_A") or hasattr(head, "base_layer"):
        raise ConfigError(
            "a PEFT adapter on the LM head is not supported: sft_exp reads lm_head.weight directly, so the "
            "adapter would never train. Remove 'lm_head' from peft target_modules (use modules_to_save instead)."
        )
    return head


def head_spec(model) -> HeadSpec:
    head = output_head(model)
    config = model.config.get_text_config()
    return HeadSpec(
        weight=head.weight,
        bias=getattr(head, "bias", None),
        logit_scale=_logit_scale(config),
        softcap=getattr(config, "final_logit_softcapping", None),
    )


def _logits_into(out: Tensor, h: Tensor, spec: HeadSpec) -> Tensor:
    """Fill the float32 buffer `out` with the chunk's final logits (after scale and soft-cap)."""
    w = spec.weight
    if h.dtype == torch.float32 and w.dtype == torch.float32:
        if spec.bias is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(spec.bias, h, w.t(), out=out)
    else:
        out.copy_(torch.nn.functional.linear(h.to(w.dtype), w, spec.bias))
    if spec.logit_scale != 1.0:
        out.mul_(spec.logit_scale)
    if spec.softcap is not None:
        out.div_(spec.softcap).tanh_().mul_(spec.softcap)
    return out


def _addmm_fp32(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b with a float32 accumulator; a bf16/fp16 `b` multiplies in its own dtype.

    On CUDA the product comes out in float32 (torch >= 2.8); on CPU (no such kernel) each chunk's
    product is rounded to b's dtype before it is added, as autocast's own weight gradient is.
    """
    if b.dtype == torch.float32:
        acc.addmm_(a.float(), b)
        return
    if acc.is_cuda:
        try:  # bf16 inputs, fp32 output on tensor cores (torch >= 2.8)
            torch.addmm(acc, a.to(b.dtype), b, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):
            pass
    acc.add_(torch.mm(a.to(b.dtype), b))


def _matmul_dtype(weight: Tensor) -> torch.dtype:
    """The weight's dtype, or autocast's where autocast is on and the weight is float32."""
    device = weight.device.type
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _in_dtype(spec: HeadSpec, dtype: torch.dtype) -> HeadSpec:
    """The spec with weight and bias cast once to the matmul dtype (not once per chunk)."""
    if spec.weight.dtype == dtype:
        return spec
    bias = spec.bias.to(dtype) if spec.bias is not None else None
    return HeadSpec(spec.weight.to(dtype), bias, spec.logit_scale, spec.softcap)


def gathered(*params: Optional[Tensor]):
    """Full parameters for the head's own use: DeepSpeed ZeRO-3 keeps each rank's shard only.

    ZeRO-3 gathers a module's parameters just before that module's forward and frees them right
    after. The head's module runs with an empty slice (sft_forward's hook) and its output feeds no
    loss, so ZeRO-3 neither keeps `lm_head.weight` for the chunked head nor gathers it again for the
    backward: `chunked_head` and the backward gather it here, each for its own pass, read-only
    (modifier_rank=None: nothing is broadcast back). The full-size gradient goes to ZeRO-3's own
    gradient hooks, which reduce-scatter it as for any layer. Without `ds_id` this is a no-op.
    """
    sharded = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if not sharded:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)


class _GatheredForBackward:
    """ZeRO-3's all-gather of `params` for the head's backward, released after their gradients accumulate.

    Not deepspeed.zero.GatheredParameters: a tied weight (lm_head = embed_tokens) is also in use by the
    embedding's own backward when the head's gradient lands, and DeepSpeed frees it after that module;
    only parameters no module still holds are partitioned here.
    """

    def __init__(self, params):
        self.params = [p for p in params if p is not None and hasattr(p, "ds_id")]

    def __enter__(self):
        if self.params:
            self.params[0].all_gather(param_list=self.params)
        return self

    def __exit__(self, *exc):
        free = [p for p in self.params if not getattr(p, "ds_active_sub_modules", None)]
        if free:
            free[0].partition(param_list=free)


def release_after_accumulation(gathering, params: list) -> None:
    """Leave `gathering` once autograd has accumulated every one of `params`' gradients (now if none).

    Autograd adds the gradient this backward returns to `param.grad` after the backward returns, and
    sizes it by the parameter's data: released to a ZeRO-3 shard of zero elements, the addition fails.
    """
    pending = [p for p in params if hasattr(p, "ds_id")]
    if not pending:
        gathering.__exit__(None, None, None)
        return
    handles = []

    def accumulated(param):
        pending.remove(param)
        if not pending:
            for handle in handles:
                handle.remove()
            gathering.__exit__(None, None, None)

    handles.extend(p.register_post_accumulate_grad_hook(accumulated) for p in pending)


class ChunkedHead(torch.autograd.Function):
    """(hidden (N,H), labels (N,)) -> log p(label) (N,), entropy (N,), is_top1 (N,)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, logit_scale, softcap):
        ctx.matmul_dtype = _matmul_dtype(weight)  # backward runs outside autocast: remember its dtype
        # Dtypes are explicit from here: autocast would also run the float32 sums (bmm) in bf16.
        with torch.autocast(hidden.device.type, enabled=False):
            return ChunkedHead._forward(ctx, hidden, weight, bias, labels, chunk_size, logit_scale, softcap)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, labels, chunk_size, logit_scale, softcap):
        spec = _in_dtype(HeadSpec(weight, bias, logit_scale, softcap), ctx.matmul_dtype)
        n, vocab = hidden.shape[0], weight.shape[0]
        log_z = hidden.new_empty(n, dtype=torch.float32)
        target = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        rows = min(n, chunk_size)
        z_buf = hidden.new_empty(rows, vocab, dtype=torch.float32)
        e_buf = torch.empty_like(z_buf)
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            z = _logits_into(z_buf[: sl.stop - start], hidden[sl], spec)
            lab = labels[sl].unsqueeze(1)
            target[sl] = z.gather(1, lab).squeeze(1)
            zmax, argmax = z.max(dim=1)
            is_top1[sl] = argmax == labels[sl]
            z.sub_(zmax.unsqueeze(1))
            e = torch.exp(z, out=e_buf[: z.shape[0]])
            sum_e = e.sum(dim=1)
            # sum_j e_j * z_j as a batched dot product: no third (rows, V) temporary
            e_dot_z = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)
            log_z[sl] = zmax + sum_e.log()
            entropy[sl] = sum_e.log() - e_dot_z / sum_e
        ctx.save_for_backward(hidden, labels, log_z)
        # The parameters themselves, not saved-tensor copies: ZeRO-3 gathers a parameter through its Python
        # object (ds_id and friends), which an unpacked saved tensor does not carry.
        ctx.head_params = (weight, bias)
        ctx.chunk_size, ctx.logit_scale, ctx.softcap = chunk_size, logit_scale, softcap
        ctx.mark_non_differentiable(entropy, is_top1)
        return target - log_z, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy, _grad_top1):
        hidden, labels, log_z = ctx.saved_tensors
        weight, bias = ctx.head_params
        # ZeRO-3 released the weight after forward: the full matrix again, until its gradient is accumulated.
        gathering = _GatheredForBackward((weight, bias))
        gathering.__enter__()
        try:
            grads = ChunkedHead._backward(ctx, grad_logp, hidden, weight, bias, labels, log_z)
        except BaseException:
            gathering.__exit__(*sys.exc_info())
            raise
        release_after_accumulation(gathering, [p for p, g in zip((weight, bias), grads[1:3]) if g is not None])
        return grads

    @staticmethod
    def _backward(ctx, grad_logp, hidden, weight, bias, labels, log_z):
        spec = _in_dtype(HeadSpec(weight, bias, ctx.logit_scale, ctx.softcap), ctx.matmul_dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, vocab, chunk = hidden.shape[0], weight.shape[0], ctx.chunk_size
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None
        # d log p_y / d logit = scale * (onehot_y - p), with the soft-cap's tanh' on top
        g = grad_logp.float() * ctx.logit_scale
        z_buf = hidden.new_empty(min(n, chunk), vocab, dtype=torch.float32)
        cap_buf = torch.empty_like(z_buf) if spec.softcap is not None else None
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            z = _logits_into(z_buf[: sl.stop - start], hidden[sl], spec)
            if cap_buf is not None:  # tanh' = 1 - (z / cap)^2, taken before z is overwritten
                dcap = torch.mul(z, 1.0 / spec.softcap, out=cap_buf[: z.shape[0]]).square_().neg_().add_(1.0)
            grad_z = z.sub_(log_z[sl].unsqueeze(1)).exp_().mul_(-g[sl].unsqueeze(1))
            grad_z.scatter_add_(1, labels[sl].unsqueeze(1), g[sl].unsqueeze(1))
            if cap_buf is not None:
                grad_z.mul_(dcap)
            if need_h:
                grad_h[sl] = grad_z.to(spec.weight.dtype) @ spec.weight
            if need_w:
                _addmm_fp32(grad_w, grad_z.t(), hidden[sl].to(spec.weight.dtype))
            if need_b:
                grad_b += grad_z.sum(dim=0)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def chunked_head(hidden: Tensor, labels: Tensor, spec: HeadSpec, chunk_size: int):
    """log p(label), entropy, is_top1 for each row of `hidden` (N, H) and its label (N,)."""
    if chunk_size < 1:
        raise ConfigError(f"loss.chunk_size must be a positive number of positions, got {chunk_size}")
    # Gathered around `apply`, not inside forward: autograd records the weight's shape at apply time,
    # and the backward's gradient must match the full shape.
    with gathered(spec.weight, spec.bias):
        return ChunkedHead.apply(
            hidden, spec.weight, spec.bias, labels, int(chunk_size), spec.logit_scale, spec.softcap
        )
