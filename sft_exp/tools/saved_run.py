"""One way to open what a run left behind: its folder and resolved config, its model or adapter, the base
an adapter was trained on, and the tokenizer it was trained with. The tools (evaluate, export and its
serving check, reproduce) all go through it, so a run folder is read, checked and explained one way.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_json
from sft_exp.errors import UserError

log = logging.getLogger(__name__)


class SavedRun:
    """A run folder (it holds resolved_config.yaml). `SavedRun.open(path)` explains what else `path` is."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path) -> SavedRun:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such folder. Give a run folder such as outputs/runs/<date>/<time>.")
        if not (path / "resolved_config.yaml").is_file():
            jobs = sorted(p.parent for p in path.glob("*/resolved_config.yaml"))
            hint = (
                f" It looks like a multirun folder: give one of its jobs, e.g. {jobs[0]}."
                if jobs
                else " Give a run folder such as outputs/runs/<date>/<time> or outputs/multiruns/<date>/<time>/<job>."
            )
            raise UserError(
                f"{path} is not a run folder: it has no resolved_config.yaml (every sft_exp run writes one).{hint}"
            )
        return cls(path)

    @staticmethod
    def is_run(path: Path) -> bool:
        return (Path(path) / "resolved_config.yaml").is_file()

    @cached_property
    def config(self):
        from omegaconf import OmegaConf

        return OmegaConf.load(self.path / "resolved_config.yaml")

    def read_json(self, name: str) -> dict:
        return read_json(self.path / name)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def has_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()

    def adapter_dir(self) -> Path:
        """model/ of a run that trained an adapter (what --merge folds into its base)."""
        if not self.model_dir.is_dir():
            raise UserError(
                f"{self.path} has no model/ folder: the run did not finish; export one of its checkpoints "
                "by resuming it to the end first."
            )
        if not self.has_adapter:
            raise UserError(
                f"{self.model_dir} is already a full model (the run trained without peft): load it with "
                "from_pretrained as it is; there is nothing to merge."
            )
        return self.model_dir

    def full_model_dir(self) -> Path:
        """model/ of a run that trained without peft (already a full model)."""
        if not (self.model_dir / "config.json").is_file():
            if self.has_adapter:
                raise UserError(f"{self.model_dir} is a LoRA adapter: add --merge to fold it into its base model.")
            raise UserError(f"{self.path} has no model/ folder: the run did not finish; resume it to the end first.")
        return self.model_dir

    def load_base(self):
        """The run's base model, unquantized, in the run's model.dtype (a GGUF base de-quantized, as trained)."""
        from omegaconf import OmegaConf

        from sft_exp.models.loader import ModelLoader

        model_cfg = OmegaConf.to_container(self.config.model, resolve=True)
        saved_base = self.path / "base_model"
        if saved_base.is_dir():
            model_cfg.update(name_or_path=str(saved_base), init_config=None, gguf_file=None, tokenizer=None)
        elif not model_cfg.get("name_or_path"):
            raise UserError(
                f"{self.path} has no base_model/ folder and its model was built from config: "
                "the base weights are gone, so the adapter cannot be merged."
            )
        load_kwargs = dict(model_cfg.get("load_kwargs") or {})
        load_kwargs.pop("quantization_config", None)
        load_kwargs.pop("device_map", None)
        model_cfg["load_kwargs"] = load_kwargs
        # The adapter's own tokenizer (saved beside it) sets the special tokens; its size must fit the base.
        return ModelLoader.from_mapping(model_cfg).load_model(self.trained_tokenizer())

    def trained_tokenizer(self):
        """The tokenizer saved with the run's model, carrying the chat template the run trained with.

        train.run sets that template on the tokenizer it saves; for a run folder written before it did,
        the template named by the run's data.chat_template is set here, so the model is prompted the way
        it was trained.
        """
        from omegaconf import OmegaConf
        from transformers import AutoTokenizer

        from sft_exp.data.templates import resolve_chat_template

        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        setting = OmegaConf.select(self.config, "data.chat_template")
        if setting is None:
            return tokenizer
        try:
            template = resolve_chat_template(setting, tokenizer)
        except UserError as e:
            log.warning("kept the saved tokenizer's chat template: the run's data.chat_template is unreadable (%s)", e)
            return tokenizer
        if template != tokenizer.chat_template:
            log.info("set the run's trained chat template (data.chat_template=%s) on the tokenizer", setting)
            tokenizer.chat_template = template
        return tokenizer


def load_saved_model(model_path: Path, run: Optional[SavedRun] = None):
    """(model, tokenizer) of a saved model for inference: a full model, a PEFT adapter on its base (the run's,
    loaded as the run loaded it, else the adapter's base_model_name_or_path), or a .gguf file (dequantized).
    Generation stops as saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if model_path.is_file():  # .gguf
        kwargs = dict(gguf_file=model_path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), dtype=dtype, **kwargs)
    elif (model_path / "adapter_config.json").is_file():
        from peft import PeftModel

        from sft_exp import compat

        compat.load_engines_only_where_used()  # peft's LoRA layers: bitsandbytes only on a quantized base
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        model = PeftModel.from_pretrained(_adapter_base(model_path, run, dtype), str(model_path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    saved = model_path / "generation_config.json" if model_path.is_dir() else None
    if saved is not None and saved.is_file():  # a saved model (or an sft_exp adapter folder): stop as saved
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(model_path))
    else:  # a GGUF file, or an adapter saved elsewhere: its base's stops plus its template's end of turn
        from sft_exp.models.stop_tokens import set_generation_stops

        set_generation_stops(model, tokenizer, tokenizer.chat_template, own_config=True)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def _adapter_base(model_path: Path, run: Optional[SavedRun], dtype):
    from transformers import AutoModelForCausalLM

    base = json.loads((model_path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not Path(base).exists():
        local = run.path / "base_model" if run is not None else None
        base = str(local) if local is not None and local.is_dir() else base
    if not base:
        raise UserError(f"{model_path}: the adapter names no base model and there is no base_model/ folder beside it")
    return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
