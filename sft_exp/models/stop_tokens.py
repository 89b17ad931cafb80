"""Where generation stops: the checkpoint's own stop ids plus the token the trained template ends a turn with.

A checkpoint's generation_config.json is what `generate()`, vLLM and llama.cpp's converter read to
stop. It must keep the checkpoint's own stop ids (Phi-3 stops at `<|end|>`, not the tokenizer's
`<|endoftext|>`) and add the token the run's template closes an assistant turn with (a base model
trained with `data.chat_template=chatml` learns to stop at `<|im_end|>`). Its other fields (sampling
defaults, pad id, ...) stay the checkpoint's own.
"""

from __future__ import annotations

import logging
from typing import Iterable, List, Optional

from sft_exp import compat
from sft_exp.data.templates import end_of_turn_token

log = logging.getLogger(__name__)


def as_ids(value) -> List[int]:
    """An eos_token_id field (None, an id or a list) as a list of ids."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def stop_ids(own: Iterable[int], tokenizer, template: Optional[str]) -> List[int]:
    """The checkpoint's own stop ids, then the template's end of turn, then the tokenizer's EOS; no repeats."""
    end = end_of_turn_token(template, tokenizer)
    ids = [*own, *([end[1]] if end else []), *as_ids(tokenizer.eos_token_id)]
    return list(dict.fromkeys(ids))


def set_generation_stops(model, tokenizer, template: Optional[str], *, own_config: bool) -> List[int]:
    """Make `model.generation_config` stop where the model was trained to; return its eos_token_id list.

    own_config: the model came from a checkpoint whose generation config (loaded by from_pretrained
    from generation_config.json, else from config.json) is the model's own; False for a model built
    from config, whose ids are the architecture's defaults and mean nothing for this tokenizer.
    """
    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    own = as_ids(config.eos_token_id) if own_config else []
    ids = stop_ids(own, tokenizer, template)
    config.eos_token_id = ids if len(ids) > 1 else (ids[0] if ids else None)
    compat.keep_generation_config(config)  # ours now: never rebuilt from config.json by generate()
    if config.pad_token_id is None or not own_config:
        config.pad_token_id = tokenizer.pad_token_id
    if not own_config:
        config.bos_token_id = tokenizer.bos_token_id
    return ids


def generation_stop_ids(model) -> List[int]:
    """The eos_token_id list of a model's generation config."""
    return as_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def save_generation_config(model, folder) -> None:
    """generation_config.json into a saved folder that lacks one (an adapter's: peft saves none), so
    whoever serves base + adapter from it stops where the run trained the model to."""
    from pathlib import Path

    model = getattr(model, "module", model)  # DDP
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if config is not None and not (Path(folder) / "generation_config.json").is_file():
        config.save_pretrained(str(folder))
