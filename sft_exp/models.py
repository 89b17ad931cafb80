"""Load the tokenizer and the model a `model=` config describes (hub id, local folder, or from config)."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import torch

from sft_exp.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """auto: bfloat16 on CUDA, float32 on CPU (bf16 on most CPUs is slower, not faster)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(model_cfg: Mapping[str, Any]):
    from transformers import AutoTokenizer

    source = model_cfg.get("tokenizer") or model_cfg.get("name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=model_cfg.get("revision"), trust_remote_code=model_cfg.get("trust_remote_code", False)
    )
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any token serves; EOS is the convention.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg: Mapping[str, Any], vocab_size: Optional[int] = None):
    """A pretrained model from `name_or_path`, or a fresh one from `init_config` (the offline tiny default)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = resolve_dtype(model_cfg.get("dtype", "auto"))
    attn = model_cfg.get("attn_implementation")
    if model_cfg.get("name_or_path"):
        kwargs = _load_kwargs(model_cfg)
        if attn:
            kwargs["attn_implementation"] = attn
        return AutoModelForCausalLM.from_pretrained(
            model_cfg["name_or_path"], dtype=dtype, revision=model_cfg.get("revision"),
            trust_remote_code=model_cfg.get("trust_remote_code", False), **kwargs,
        )
    fields = dict(model_cfg["init_config"])
    model_type = fields.pop("model_type")
    if vocab_size is not None:
        fields.setdefault("vocab_size", vocab_size)
    config = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    log.info("built a fresh %s model from config: %.2fM parameters", model_type,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def _load_kwargs(model_cfg: Mapping[str, Any]) -> dict:
    """model.load_kwargs for from_pretrained, with a quantization_config mapping made a config object."""
    kwargs = dict(model_cfg.get("load_kwargs") or {})
    quant = kwargs.get("quantization_config")
    if isinstance(quant, Mapping):
        from transformers.quantizers.auto import AutoQuantizationConfig

        kwargs["quantization_config"] = AutoQuantizationConfig.from_dict(dict(quant))
        # A quantized model cannot be moved after loading: put it on this rank's GPU now.
        kwargs.setdefault("device_map", {"": int(os.environ.get("LOCAL_RANK", 0))})
    return kwargs


def align_special_tokens(model, tokenizer) -> None:
    """Generation stops at the tokenizer's EOS (e.g. <|im_end|>), pads with its pad token."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        if tokenizer.eos_token_id is not None:
            cfg.eos_token_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is not None:
            cfg.pad_token_id = tokenizer.pad_token_id
        if tokenizer.bos_token_id is not None:
            cfg.bos_token_id = tokenizer.bos_token_id
