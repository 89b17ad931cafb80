"""sft_forward + NLL/DFT against a naive full-logits reference on real tiny models."""

import pytest
import torch

from sft_exp.data import SFTCollator
from sft_exp.data.packing import pack_bfd
from sft_exp.training.forward import sft_forward
from sft_exp.training.losses import DFTLoss, NLLLoss
from tests.helpers import tiny_causal_lm

VOCAB = 96


def tiny_qwen2(tied: bool, seed: int = 0, attn_implementation: str = "sdpa"):
    return tiny_causal_lm(
        vocab_size=VOCAB, hidden_size=32, tie_word_embeddings=tied, seed=seed, attn_implementation=attn_implementation
    )


def make_batch(b=4, length=12, seed=0, vocab=VOCAB, sources=1):
    """Right-padded rows with a prompt (unsupervised) then a completion (supervised)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (b, length), generator=g)
    attention_mask = torch.ones(b, length, dtype=torch.long)
    labels = input_ids.clone()
    for row in range(b):
        n_real = length - row
        attention_mask[row, n_real:] = 0
        labels[row, : 2 + row] = -100
        labels[row, n_real:] = -100
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    source_ids = torch.where(attention_mask.bool(), torch.arange(b)[:, None] % sources, -1)
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        labels=labels,
        source_ids=source_ids,
    )


def reference(model, batch, dft=False, num_items=None):
    """Full logits, shifted: loss (to backprop), accuracy, entropy, per-token NLL."""
    logits = (
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
        .logits[:, :-1]
        .float()
    )
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logp_all = torch.log_softmax(logits, -1)[mask]
    logp = logp_all.gather(1, targets[mask][:, None]).squeeze(1)
    per_token = -logp.detach().exp() * logp if dft else -logp
    n = mask.sum() if num_items is None else num_items
    return dict(
        loss=per_token.sum() / max(int(n), 1),
        accuracy=(logp_all.argmax(-1) == targets[mask]).float().mean(),
        entropy=-(logp_all.exp() * logp_all).sum(-1).mean(),
        nll=-logp.detach(),
    )


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("loss_cls", [NLLLoss, DFTLoss])
def test_matches_full_logits_reference(tied, loss_cls):
    model, batch = tiny_qwen2(tied), make_batch()
    out = sft_forward(model, batch, loss_cls(chunk_size=7))
    out.loss.backward()
    got = grads(model)
    model.zero_grad(set_to_none=True)
    ref = reference(model, batch, dft=loss_cls is DFTLoss)
    ref["loss"].backward()

    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-5, atol=1e-6)
    assert_grads_close(got, grads(model))
    n = out.num_supervised
    assert int(n) == ref["nll"].numel()
    torch.testing.assert_close(out.num_correct / n, ref["accuracy"])
    torch.testing.assert_close(out.entropy_sum / n, ref["entropy"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.nll_sum, ref["nll"].sum(), rtol=1e-5, atol=1e-5)
    assert out.aux_loss is None


def test_nll_equals_the_models_own_loss():
    model, batch = tiny_qwen2(tied=False), make_batch(seed=3)
    out = sft_forward(model, batch, NLLLoss())
    hf = model(**{k: v for k, v in batch.items() if k != "source_ids"}).loss
    torch.testing.assert_close(out.loss, hf, rtol=1e-5, atol=1e-6)


def test_per_source_sums_split_the_nll():
    model, batch = tiny_qwen2(tied=True), make_batch(sources=2)
    out = sft_forward(model, batch, NLLLoss(), num_sources=3)
    nll = reference(model, batch)["nll"]
    src = batch["source_ids"][:, 1:][batch["labels"][:, 1:] != -100]
    for s in range(3):
        torch.testing.assert_close(out.source_loss_sum[s], nll[src == s].sum(), rtol=1e-5, atol=1e-5)
        assert int(out.source_count[s]) == int((src == s).sum())
    assert int(out.source_count[2]) == 0


def test_no_supervised_tokens_gives_zero_loss_not_nan():
    model, batch = tiny_qwen2(tied=False), make_batch()
    batch["labels"].fill_(-100)
    for items in (None, 0):
        out = sft_forward(model, batch, DFTLoss(), num_items_in_batch=items)
        assert out.loss.item() == 0.0 and int(out.num_supervised) == 0
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_accumulation_4x2_equals_1x8():
    model, batch = tiny_qwen2(tied=False), make_batch(b=8, length=14, seed=5)
    total = int((batch["labels"][:, 1:] != -100).sum())
    sft_forward(model, batch, NLLLoss(chunk_size=5), num_items_in_batch=total).loss.backward()
    full = grads(model)
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        micro = {k: v[i : i + 2] for k, v in batch.items()}
        sft_forward(model, micro, NLLLoss(chunk_size=5), num_items_in_batch=torch.tensor(total)).loss.backward()
    assert_grads_close(full, grads(model), rtol=1e-5, atol=1e-7)


def _documents(lengths, seed=0):
    """Fully supervised documents (labels = input_ids), as prepared rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        labels = [-100 if t < length // 3 else token for t, token in enumerate(ids)]  # a prompt, then a reply
        rows.append(
            {"input_ids": ids, "labels": labels, "position_ids": list(range(length)), "source_ids": [0] * length}
        )
    return rows


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("loss_cls", [NLLLoss, DFTLoss])
def test_packed_batch_equals_unpacked_through_sft_forward(attn_implementation, loss_cls):
    """The trainer's own path: packed rows (padding-free, positions restart) vs padded rows, loss, metrics, grads."""
    import datasets

    model = tiny_qwen2(tied=False, attn_implementation=attn_implementation)
    rows = _documents([23, 9, 31, 5, 17, 12])
    unpacked = SFTCollator(pad_token_id=0)(rows)
    packed = SFTCollator(pad_token_id=0, padding_free=True)(list(pack_bfd(datasets.Dataset.from_list(rows), 48)))
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # several documents in one row

    results = []
    for batch in (unpacked, packed):
        model.zero_grad(set_to_none=True)
        out = sft_forward(model, batch, loss_cls(chunk_size=8))
        out.loss.backward()
        results.append((out, grads(model)))
    (u, u_grads), (p, p_grads) = results
    assert int(p.num_supervised) == int(u.num_supervised) and int(p.num_correct) == int(u.num_correct)
    torch.testing.assert_close(p.loss, u.loss, rtol=0, atol=1e-5)  # the README's promise: within 1e-5
    for name in ("nll_sum", "entropy_sum"):  # per supervised token, as they are logged
        torch.testing.assert_close(
            getattr(p, name) / p.num_supervised, getattr(u, name) / u.num_supervised, rtol=0, atol=1e-5, msg=name
        )
    assert_grads_close(p_grads, u_grads, rtol=1e-4, atol=1e-5)


def _per_position_nll(model, batch):
    """Each label position's NLL, through sft_forward: every position is its own "source"."""
    length = batch["input_ids"].shape[1]
    positions = dict(batch, source_ids=torch.arange(length).unsqueeze(0))
    with torch.no_grad():
        out = sft_forward(model, positions, NLLLoss(chunk_size=4), num_sources=length)
    return out.source_loss_sum, out.source_count


def test_packed_rows_never_predict_across_documents():
    """Per position: no label is predicted from another document, and no document's log-probs see another's tokens."""
    model = tiny_qwen2(tied=True)
    lengths = [6, 5, 7]
    starts = [0, 6, 11]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = dict(input_ids=ids, labels=ids.clone(), position_ids=positions)  # every label supervised, even starts
    nll, count = _per_position_nll(model, packed)

    # The first token of each document is never a target: predicting it would read the document before.
    assert count[starts].tolist() == [0, 0, 0]
    assert count.sum() == sum(n - 1 for n in lengths)

    # Change document A's tokens: the per-token log-probs of B and C stay the same, A's move.
    changed_ids = ids.clone()
    changed_ids[0, :6] = (ids[0, :6] + 7) % (VOCAB - 1) + 1
    changed_nll, changed_count = _per_position_nll(
        model, dict(packed, input_ids=changed_ids, labels=changed_ids.clone())
    )
    assert torch.equal(changed_count, count)
    torch.testing.assert_close(changed_nll[6:], nll[6:], rtol=0, atol=1e-6)
    assert (changed_nll[1:6] - nll[1:6]).abs().min() > 1e-4  # the control: A's own predictions did change


def test_gemma2_softcapping_matches_model_logits():
    model = tiny_causal_lm(
        "gemma2",
        vocab_size=VOCAB,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=2.0,
        attn_implementation="eager",
    )
    batch = make_batch(seed=4)
    out = sft_forward(model, batch, NLLLoss(chunk_size=4))
    out.loss.backward()
    got = grads(model)
    model.zero_grad(set_to_none=True)
    ref = reference(model, batch)
    ref["loss"].backward()
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.entropy_sum / out.num_supervised, ref["entropy"], rtol=1e-5, atol=1e-6)
    assert_grads_close(got, grads(model))


def test_mixtral_router_aux_loss_is_added_with_its_coefficient():
    model = tiny_causal_lm(
        "mixtral",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.02,
    )
    batch = make_batch(seed=6)
    out = sft_forward(model, batch, NLLLoss())
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    hf = model(**{k: v for k, v in batch.items() if k != "source_ids"})  # HF adds coef * aux_loss itself
    torch.testing.assert_close(out.aux_loss, hf.aux_loss.detach())
    torch.testing.assert_close(out.loss, hf.loss, rtol=1e-5, atol=1e-6)
    nll_only = out.loss - 0.02 * out.aux_loss
    custom = sft_forward(model, batch, NLLLoss(), router_aux_loss_coef=0.5)
    torch.testing.assert_close(custom.loss, nll_only + 0.5 * out.aux_loss, rtol=1e-5, atol=1e-6)


def test_lora_model_trains_adapters_with_reference_gradients():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_qwen2(tied=False), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    batch = make_batch(seed=7)
    out = sft_forward(model, batch, DFTLoss(chunk_size=3))
    out.loss.backward()
    got = grads(model)
    assert got and all("lora_" in name for name in got)
    model.zero_grad(set_to_none=True)
    reference(model, batch, dft=True)["loss"].backward()
    assert_grads_close(got, grads(model))


def test_under_bf16_autocast_the_head_computes_what_transformers_lm_head_does():
    """trainer.precision=bf16: the chunked head multiplies in bf16 as autocast's lm_head does (2.3x fp32 on CPUs
    with AVX512-BF16), so loss and head gradient equal transformers' own autocast forward, not an fp32 head's."""
    model = tiny_causal_lm(vocab_size=1000)
    g = torch.Generator().manual_seed(0)
    rows = []
    for length in (40, 25, 33):
        ids = torch.randint(1, 1000, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": ids, "position_ids": list(range(length)), "source_ids": [0] * length})
    batch = SFTCollator(pad_token_id=0)(rows)

    def loss_and_head_grad(forward, autocast=True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = forward()
        loss.backward()
        return loss.detach(), model.lm_head.weight.grad.clone()

    hf_loss, hf_grad = loss_and_head_grad(
        lambda: model(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"]).loss
    )
    loss, grad = loss_and_head_grad(lambda: sft_forward(model, batch, NLLLoss()).loss)
    fp32_loss, _ = loss_and_head_grad(lambda: sft_forward(model, batch, NLLLoss()).loss, autocast=False)
    torch.testing.assert_close(loss, hf_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, hf_grad, rtol=1e-3, atol=1e-6)
    assert (fp32_loss - hf_loss).abs() > 1e-5  # the comparison can tell bf16 logits from fp32 ones
