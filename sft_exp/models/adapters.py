"""PEFT adapters (LoRA, DoRA, QLoRA): checked before anything loads, then wrapped around the model.

`check_adapter_config` runs with the other config checks: QLoRA without a bitsandbytes that can run here, and
LoRA target modules that name nothing in the model, fail in seconds. The targets are matched
against the model's skeleton built on the meta device (config.json only, no weights).
`wrap_with_adapter` repeats the target check on the loaded model, wraps it and reports the
trainable parameters.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List, Mapping, Optional

from sft_exp import compat
from sft_exp.errors import ConfigError

# torch and transformers are imported where used: validation runs before they load (seconds).
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- before anything loads
def check_adapter_config(model: Mapping[str, Any], peft: Optional[Mapping[str, Any]]) -> None:
    """Refuse adapter settings that cannot work here. `model` holds the model preset's fields, `peft` the
    adapter's (None without one); both plain mappings."""
    quant = (model.get("load_kwargs") or {}).get("quantization_config")
    if quant is not None and not model.get("name_or_path"):
        raise ConfigError(
            "peft=qlora (model.load_kwargs.quantization_config) quantizes pretrained weights while loading "
            "them, but this model is built from model.init_config: set model.name_or_path to a pretrained "
            "model, or use peft=lora."
        )
    if quant is not None and quant.get("quant_method", "bitsandbytes") == "bitsandbytes":
        _check_bitsandbytes()
    if not peft:
        return
    skeleton = _skeleton(model)
    if skeleton is not None:
        check_targets(skeleton, peft.get("target_modules"), peft.get("modules_to_save"))


# The first bitsandbytes release whose 4-bit (NF4) layers were tested here without CUDA (CPU backend).
BNB_ON_CPU = "0.50"


def _check_bitsandbytes() -> None:
    from importlib.metadata import version
    from importlib.util import find_spec

    import torch
    from packaging.version import Version

    if find_spec("bitsandbytes") is None:
        raise ConfigError(
            "peft=qlora needs the bitsandbytes package: `pip install 'sft_exp[qlora]'` (or "
            "`pip install bitsandbytes`), or use peft=lora."
        )
    installed = version("bitsandbytes")
    if not torch.cuda.is_available() and Version(installed) < Version(BNB_ON_CPU):
        raise ConfigError(
            f"peft=qlora without CUDA needs bitsandbytes>={BNB_ON_CPU} (its CPU backend runs the 4-bit layers); "
            f"bitsandbytes {installed} is installed: `pip install -U bitsandbytes`, or use peft=lora."
        )


def _skeleton(model: Mapping[str, Any]) -> Optional[torch.nn.Module]:
    """The model's modules on the meta device (no weights); None when its config cannot be read yet."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = bool(model.get("trust_remote_code", False))
    try:
        if model.get("name_or_path"):
            config = AutoConfig.from_pretrained(
                model["name_or_path"], revision=model.get("revision"), trust_remote_code=remote
            )
        else:
            fields = dict(model["init_config"])
            config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
    except (OSError, ValueError, KeyError) as e:
        # No network, a GGUF folder or an unusual model: the same check runs on the loaded model instead.
        log.debug("adapter targets checked after loading (%s: %s)", type(e).__name__, e)
        return None


# ----------------------------------------------------------------------------- target modules
def _matches(name: str, target: str, key: str) -> bool:
    """peft's rules: a target_modules entry is the full name or its last dotted parts; a
    modules_to_save entry is any suffix of the name."""
    if key == "modules_to_save":
        return name.endswith(target)
    return name == target or name.endswith("." + target)


def linear_module_names(model: torch.nn.Module) -> List[str]:
    """Distinct short names of the model's Linear layers (what target_modules usually lists)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names)


def check_targets(model: torch.nn.Module, targets: Any, modules_to_save: Optional[Iterable[str]] = None) -> None:
    """Every named target must match a module of `model`; a typo would silently train less."""
    names = [name for name, _ in model.named_modules()]
    kind = type(model).__name__
    if isinstance(targets, str) and targets != "all-linear":  # peft reads a string as a regex over full names
        if not any(re.fullmatch(targets, n) for n in names):
            raise ConfigError(
                f"peft.target_modules={targets!r} (a regex) matches no module of {kind}. "
                f"Its Linear layers: {', '.join(linear_module_names(model))}."
            )
    listed = [] if targets is None or isinstance(targets, str) else targets
    for key, wanted in (("target_modules", listed), ("modules_to_save", modules_to_save or [])):
        unknown = [t for t in wanted if not any(_matches(n, t, key) for n in names)]
        if unknown:
            raise ConfigError(
                f"peft.{key} names {unknown}, which match no module of {kind}. Its Linear layers: "
                f"{', '.join(linear_module_names(model))}. Fix the list (e.g. peft.{key}=[q_proj,v_proj]) "
                "or use peft.target_modules=all-linear."
            )


# ----------------------------------------------------------------------------- wrapping
def wrap_with_adapter(model, peft_config):
    """The model wrapped in a PEFT adapter (or unchanged without one); logs the trainable parameters."""
    if peft_config is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_targets(model, peft_config.target_modules, peft_config.modules_to_save)
    if getattr(model, "is_quantized", False):
        # fp32 norms and input grads for a 4-bit base; checkpointing stays the memory group's choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _keep_training_layout_of_4bit_weights(model)
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing` (v6 drops it)
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model = get_peft_model(model, peft_config)
    counts = parameter_counts(model)
    log.info(
        "adapter: %s trainable of %s parameters (%.3f%%)",
        f"{counts['trainable_params']:,}",
        f"{counts['total_params']:,}",
        counts["trainable_percent"],
    )
    return model


def _keep_training_layout_of_4bit_weights(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight for inference at its first
    eval-mode forward (the evaluation before training) and never back; the next training forward then
    fails ("a view of a leaf Variable ... in-place operation"). Keep the layout training uses."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def parameter_counts(model) -> dict:
    """Trainable and total parameters (a 4-bit weight counts as its unpacked size, as peft reports it)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
    }


def save_base_for_export(model, tokenizer, run_dir: Path) -> Optional[Path]:
    """A base built from config exists nowhere else: keep it beside the adapter, so export can merge.

    Saved before the adapter is added. Only models built from `model.init_config` (tiny by design)
    are saved; a pretrained base is found again from model.name_or_path.
    """
    folder = (Path(run_dir) / "base_model").resolve()
    if (folder / "model.safetensors").is_file():
        _check_same_base(model, folder)  # a resumed run rebuilt its base: it must be the saved one
    else:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    # peft records this as the adapter's base_model_name_or_path, so AutoPeftModel finds the base.
    compat.set_name_or_path(model, folder)
    return folder


def _check_same_base(model, folder: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    current = model.state_dict()
    if any(not current[k].equal(saved[k].to(current[k].dtype)) for k in saved if k in current):
        raise RuntimeError(
            f"the base model rebuilt from model.init_config differs from the one this run saved in {folder}; "
            "the adapter checkpoints belong to that one. Resume with the same seed and model config."
        )
