"""`ModelLoader`: the tokenizer and the model a `model=` preset describes (hub id, local folder, GGUF file,
or a fresh model from config). Hydra builds it from conf/model/*.yaml; Python builds it directly:

    loader = ModelLoader(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = loader.load_tokenizer()
    model = loader.load_model(tokenizer)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from sft_exp.errors import ConfigError
from sft_exp.models.attention import register as register_varlen_sdpa
from sft_exp.models.attention import use_varlen_sdpa
from sft_exp.plain import plain

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str) -> torch.dtype:
    """auto: bfloat16 on CUDA, float32 on CPU (bf16 on most CPUs is slower, not faster)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class ModelLoader:
    """Where the weights and the tokenizer come from, and how to load them. Its fields are the `model`
    schema (sft_exp.config generates it from this class)."""

    # Hub id or local folder. None builds a fresh model from `init_config` (the offline tiny default).
    name_or_path: Optional[str] = None
    # Tokenizer hub id or folder; None: the model's own (from the same folder or GGUF file).
    tokenizer: Optional[str] = None
    # transformers config fields for `from_config` (needs `model_type`); vocab_size defaults to the tokenizer's.
    init_config: Optional[dict] = None
    # auto: bfloat16 on CUDA, float32 on CPU. Or float32 / bfloat16 / float16.
    dtype: str = "auto"
    attn_implementation: Optional[str] = "sdpa"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # Extra keyword arguments for from_pretrained (e.g. quantization_config via peft=qlora).
    load_kwargs: dict = field(default_factory=dict)
    # A .gguf file in `name_or_path` (or a path): loaded de-quantized, as a trainable float model, with the
    # tokenizer stored in the same file (unless `tokenizer` is set).
    gguf_file: Optional[str] = None
    # The tokenizer has more tokens than the model has embedding rows (you added tokens): resize (true) or
    # refuse before training (false).
    resize_embeddings: bool = False
    # The tokenizer's end-of-sequence token becomes this one (it must be in the vocabulary), as TRL's and
    # open-r1's `eos_token` do: what training appends to text and completions, config.json's eos_token_id,
    # the saved tokenizer's eos, and the first of the generation config's stop ids. None: the tokenizer's own.
    eos_token: Optional[str] = None
    # Modules a LoRA adapter wraps (peft.target_modules defaults to `${model.lora_target_modules}`): a name
    # list or "all-linear". Kept here so the preset is one object.
    lora_target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        self.init_config = plain(self.init_config)
        self.load_kwargs = dict(plain(self.load_kwargs) or {})
        self.lora_target_modules = plain(self.lora_target_modules)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> ModelLoader:
        """From a `model:` mapping (e.g. a run's resolved_config.yaml); Hydra's `_target_` and `_convert_` left out."""
        return cls(**{k: v for k, v in dict(plain(fields)).items() if not k.startswith("_")})

    # ------------------------------------------------------------------------- tokenizer
    def load_tokenizer(self):
        from transformers import AutoTokenizer

        source = self.tokenizer or self.name_or_path
        if not source:
            raise ConfigError("model.tokenizer and model.name_or_path are both null; set one so the tokenizer loads.")
        kwargs = {}
        if self.gguf_file and not self.tokenizer:
            kwargs["gguf_file"] = self.gguf_file  # the GGUF file carries its own tokenizer
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=self.revision, trust_remote_code=self.trust_remote_code, **kwargs
        )
        if self.eos_token is not None:
            set_eos_token(tokenizer, self.eos_token, source)
        if tokenizer.pad_token is None:
            # Padding positions are masked out of attention and loss, so any token serves; EOS is the convention.
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # ------------------------------------------------------------------------- model
    def load_model(self, tokenizer):
        """The model, its special tokens set to the tokenizer's, its embeddings checked to fit the tokenizer.

        Its generation config stays the checkpoint's own, with the end-of-turn token of the tokenizer's
        chat template (the one the run trains with: train.run sets it first) added to its stop ids.
        """
        register_varlen_sdpa()  # model.attn_implementation=sdpa_varlen may be asked for by name
        model = self._pretrained() if self.name_or_path else self._from_config(len(tokenizer))
        use_varlen_sdpa(model)  # sdpa, except padding-free batches attend per example with no dense mask
        align_special_tokens(model, tokenizer, own_generation_config=bool(self.name_or_path))
        self._fit_embeddings(model, tokenizer)
        return model

    def _pretrained(self):
        from transformers import AutoModelForCausalLM

        kwargs = self._load_kwargs()
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.gguf_file:
            from transformers import GgufConfig

            # Unpacked to dense float weights: packed GGUF layers (used when a GGUF kernel is installed)
            # cannot be trained, and Trainer refuses a model that still says it is quantized.
            kwargs.update(gguf_file=self.gguf_file, quantization_config=GgufConfig(dequantize=True))
        model = AutoModelForCausalLM.from_pretrained(
            self.name_or_path, dtype=resolve_dtype(self.dtype), revision=self.revision,
            trust_remote_code=self.trust_remote_code, **kwargs,
        )  # fmt: skip
        if self.gguf_file:
            _drop_gguf_quantization(model)
            log.info("loaded %s from GGUF %s as a float model (%s)", self.name_or_path, self.gguf_file, model.dtype)
        return model

    def _from_config(self, vocab_size: int):
        from transformers import AutoConfig, AutoModelForCausalLM

        if not self.init_config or "model_type" not in self.init_config:
            raise ConfigError("model.init_config needs a model_type (e.g. qwen2, llama) to build a model from config.")
        fields = dict(self.init_config)
        model_type = fields.pop("model_type")
        fields.setdefault("vocab_size", vocab_size)
        config = AutoConfig.for_model(model_type, **fields)
        model = AutoModelForCausalLM.from_config(
            config, dtype=resolve_dtype(self.dtype), attn_implementation=self.attn_implementation
        )
        log.info(
            "built a fresh %s model from config: %.2fM parameters",
            model_type,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        return model

    def _load_kwargs(self) -> dict:
        """model.load_kwargs for from_pretrained, with a quantization_config mapping made a config object."""
        kwargs = dict(self.load_kwargs)
        quant = kwargs.get("quantization_config")
        if isinstance(quant, Mapping):
            from transformers.quantizers.auto import AutoQuantizationConfig

            kwargs["quantization_config"] = AutoQuantizationConfig.from_dict(dict(quant))
            # A quantized model cannot be moved after loading: put it on this rank's GPU (or the CPU) now.
            device = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"
            kwargs.setdefault("device_map", {"": device})
        return kwargs

    def _fit_embeddings(self, model, tokenizer) -> None:
        """Every token id must have an embedding row: an id past the table fails mid-training (or on GPU, worse)."""
        rows = model.get_input_embeddings().num_embeddings
        needed = len(tokenizer)
        if needed <= rows:
            return
        where = self.tokenizer or self.name_or_path
        if not self.resize_embeddings:
            raise ConfigError(
                f"the tokenizer ({where}) has {needed} tokens but the model ({self.name_or_path or 'from config'}) "
                f"has {rows} embedding rows: ids {rows}..{needed - 1} have no embedding. Use the model's own "
                "tokenizer (model.tokenizer=null), or, if you added tokens on purpose, set "
                "model.resize_embeddings=true (the new rows start untrained; with peft=lora also set "
                "peft.modules_to_save=[embed_tokens,lm_head] so they are trained)."
            )
        model.resize_token_embeddings(needed)
        log.warning(
            "model.resize_embeddings=true: resized the embeddings from %d to %d rows for the tokenizer's "
            "%d added token(s); the new rows start untrained",
            rows,
            needed,
            needed - rows,
        )


def set_eos_token(tokenizer, eos_token: str, source: str) -> None:
    """model.eos_token: the tokenizer's EOS becomes this token, which must already be one of its tokens (a new
    token would have no trained embedding; TRL refuses it too)."""
    if eos_token not in tokenizer.get_vocab():
        raise ConfigError(
            f"model.eos_token={eos_token!r} is not a token of the tokenizer of {source}; use one of its tokens "
            f"(its EOS is {tokenizer.eos_token!r}), or null to keep the tokenizer's own"
        )
    if tokenizer.eos_token != eos_token:
        log.info(
            "model.eos_token: the tokenizer's EOS %r becomes %r (appended to text and completions, "
            "config.json's eos_token_id, the saved tokenizer, the first stop id)",
            tokenizer.eos_token,
            eos_token,
        )
    tokenizer.eos_token = eos_token


def _drop_gguf_quantization(model) -> None:
    """A de-quantized GGUF model still carrying its GgufConfig would be refused by Trainer as 'quantized'."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def align_special_tokens(model, tokenizer, *, own_generation_config: bool = True) -> None:
    """config.json's special ids become the tokenizer's (what training appends and pads with); the
    generation config keeps the checkpoint's own stop ids and sampling defaults, and gains the trained
    template's end of turn (see models/stop_tokens.py)."""
    from sft_exp.models.stop_tokens import set_generation_stops

    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            setattr(model.config, name, value)
    ids = set_generation_stops(
        model, tokenizer, getattr(tokenizer, "chat_template", None), own_config=own_generation_config
    )
    log.info("generation stops at %s", ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} ({i})" for i in ids))
