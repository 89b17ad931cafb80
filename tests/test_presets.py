"""Model presets: each composes, and each loads from a local folder holding a tiny model of its architecture.

No hub access here: a real preset is tested by saving a tiny model of the same architecture (with
the shipped tokenizer) and pointing `model.name_or_path` at it, as a user with a local copy would.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoTokenizer

from sft_exp.models.adapters import wrap_with_adapter
from sft_exp.paths import asset_path, config_dir
from sft_exp.preflight import validate_config
from sft_exp.training.forward import sft_forward
from sft_exp.training.losses import NLLLoss
from tests.helpers import compose, tiny_causal_lm

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
# The hub model each preset names, and its architecture (what the tiny stand-in is built as).
REAL_PRESETS = {
    "smollm2_135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama", {}),
    "qwen2_5_0_5b": ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", {}),
    "llama3_2_1b": ("meta-llama/Llama-3.2-1B-Instruct", "llama", {}),
    "qwen1_5_moe_a2_7b": (
        "Qwen/Qwen1.5-MoE-A2.7B-Chat",
        "qwen2_moe",
        dict(
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=4,
            num_experts_per_tok=2,
            output_router_logits=True,
        ),
    ),
}


def test_every_model_option_has_a_preset_test():
    presets = {p.stem for p in (config_dir() / "model").glob("*.yaml")}
    assert set(REAL_PRESETS) | {"tiny", "tiny_moe", "hf"} == presets  # hf: tests/test_models.py


@pytest.mark.parametrize("preset", sorted(REAL_PRESETS))
def test_real_preset_names_its_model(preset):
    cfg = compose([f"model={preset}"])
    hub_id, _, _ = REAL_PRESETS[preset]
    assert cfg.model.name_or_path == hub_id and cfg.model.init_config is None
    assert cfg.model.dtype == "auto" and cfg.model.attn_implementation == "sdpa"
    assert cfg.model.lora_target_modules


def _save_tiny(folder, model_type: str, extra: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    tiny_causal_lm(model_type, vocab_size=len(tokenizer), **SMALL, **extra).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _one_step(model_cfg, peft_cfg):
    """Load as train.run does, wrap in LoRA, and check one forward/backward trains the adapter.

    Returns the model, the batch and sft_forward's output."""
    loader = instantiate(model_cfg)
    tokenizer = loader.load_tokenizer()
    model = wrap_with_adapter(loader.load_model(tokenizer), instantiate(peft_cfg))
    ids = tokenizer(["reverse: abc -> cba", "sort: 3 1 2 -> 1 2 3"], padding=True, return_tensors="pt")
    batch = {**ids, "labels": ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)}
    out = sft_forward(model, batch, NLLLoss())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    return model, batch, out


@pytest.mark.parametrize("preset", sorted(REAL_PRESETS))
def test_real_preset_loads_a_local_copy_and_trains_lora(preset, tmp_path):
    _, model_type, extra = REAL_PRESETS[preset]
    _save_tiny(tmp_path, model_type, extra)
    cfg = compose([f"model={preset}", f"model.name_or_path={tmp_path}", "peft=lora"])
    validate_config(cfg)  # the preset's LoRA targets exist in this architecture
    _one_step(cfg.model, cfg.peft)


def test_tiny_moe_trains_lora_with_router_loss():
    from sft_exp.training.metrics import SFTMetrics

    cfg = compose(["model=tiny_moe", "peft=lora"])
    validate_config(cfg)
    model, batch, out = _one_step(cfg.model, cfg.peft)
    coef = model.config.router_aux_loss_coef
    assert out.aux_loss is not None and out.aux_loss.item() > 0 and coef > 0
    with torch.no_grad():  # the router loss is part of the loss that trains: without it, the loss drops by coef * aux
        without = sft_forward(model, batch, NLLLoss(), router_aux_loss_coef=0.0)
    torch.testing.assert_close(out.loss.detach() - without.loss, coef * out.aux_loss, rtol=1e-4, atol=1e-7)
    assert out.loss.item() != without.loss.item()
    metrics = SFTMetrics()
    metrics.add(out)
    assert metrics.compute_and_reset(None, ["data"])["aux_loss"] == pytest.approx(out.aux_loss.item())  # and logged
