"""sft_forward + NLL/DFT against a naive full-logits reference on real tiny models."""
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, MixtralConfig, Qwen2Config

from sft_exp.loss import DFTLoss, NLLLoss
from sft_exp.sft_forward import sft_forward

VOCAB = 96


def tiny_qwen2(tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


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
    return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                labels=labels, source_ids=source_ids)


def reference(model, batch, dft=False, num_items=None):
    """Full logits, shifted: loss (to backprop), accuracy, entropy, per-token NLL."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, :-1].float()
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
        micro = {k: v[i: i + 2] for k, v in batch.items()}
        sft_forward(model, micro, NLLLoss(chunk_size=5), num_items_in_batch=torch.tensor(total)).loss.backward()
    assert_grads_close(full, grads(model), rtol=1e-5, atol=1e-7)


def test_packed_rows_do_not_predict_across_documents():
    model = tiny_qwen2(tied=True)
    a, b = make_batch(b=1, length=6, seed=1), make_batch(b=1, length=5, seed=2)
    a["labels"], b["labels"] = a["input_ids"].clone(), b["input_ids"].clone()  # fully supervised
    packed = {k: torch.cat([a[k], b[k]], 1) for k in ("input_ids", "labels", "position_ids")}
    out = sft_forward(model, packed, NLLLoss())
    assert int(out.num_supervised) == (6 - 1) + (5 - 1)


def test_gemma2_softcapping_matches_model_logits():
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          final_logit_softcapping=2.0, attn_implementation="eager")
    model = AutoModelForCausalLM.from_config(config)
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
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                           num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02)
    model = AutoModelForCausalLM.from_config(config)
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
