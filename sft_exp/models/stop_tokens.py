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

log = logging.getLogger(__name__)

_REPLY = "SFTEXPREPLY7"  # an answer no template rewrites; what follows it in the rendering ends the turn
_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}]


def as_ids(value) -> List[int]:
    """An eos_token_id field (None, an id or a list) as a list of ids."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _marker_tokens(tokenizer) -> dict:
    """Added and special tokens (text -> id): the only tokens that can mark an end of turn."""
    tokens = {t.content: i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for text in getattr(tokenizer, "all_special_tokens", []):
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            tokens.setdefault(text, token_id)
    return tokens


def end_of_turn_token(template: Optional[str], tokenizer) -> Optional[tuple]:
    """(text, id) of the token that follows the assistant's content when `template` renders one turn.

    None when nothing marks the end (the content is followed by plain text or nothing), the template
    cannot render a user-assistant turn, or there is no template (plain text: the tokenizer's EOS).
    """
    if not template:
        return None
    from sft_exp.data.templates import render_conversation, template_variables  # (data imports this module)

    try:
        text, _ = render_conversation(template, _TURN, None, template_variables(tokenizer))
    except Exception as err:  # a template that refuses this turn: no end of turn to find
        log.debug("the chat template does not render a user/assistant turn: %s", err)
        return None
    at = text.rfind(_REPLY)
    if at < 0:
        return None
    after = text[at + len(_REPLY):].lstrip(" \t")  # Llama-2 style templates put a space before EOS
    candidates = [(t, i) for t, i in _marker_tokens(tokenizer).items() if t and after.startswith(t)]
    return max(candidates, key=lambda item: len(item[0])) if candidates else None


def template_name(setting: Optional[str], template: Optional[str], tokenizer=None) -> str:
    """How a warning names the template: the data.chat_template setting, or the tokenizer's own."""
    if setting and len(setting) < 200 and "\n" not in setting:
        return f"data.chat_template={setting}"
    if setting is None:
        return f"the chat template of {getattr(tokenizer, 'name_or_path', None) or 'the tokenizer'} (data.chat_template=null)"
    return f"data.chat_template ({(template or '')[:60]!r}...)"


def warn_if_no_end_of_turn(template: Optional[str], tokenizer, setting: Optional[str]) -> None:
    """Data preparation: a template with no end-of-turn token teaches no stop, and the saved model runs on."""
    if template and end_of_turn_token(template, tokenizer) is None:
        log.warning(
            "%s ends an assistant turn with no special token (nothing special follows the assistant's content in "
            "a one-turn user/assistant conversation), so the "
            "model is not taught where to stop and the saved generation config can only stop at the tokenizer's "
            "EOS %r; use a template that closes each turn with a token (e.g. data.chat_template=chatml)",
            template_name(setting, template, tokenizer), tokenizer.eos_token,
        )


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


def end_of_turn_stats(train, tokenizer, template: Optional[str]) -> dict:
    """The end-of-turn token and how much of the training signal it is: {token, id, trained, supervised, share}.

    `trained`: training targets equal to it; `supervised`: every training target (labels != -100, the
    first token of an example excluded). share 0 means the model was never taught to stop there.
    """
    import numpy as np
    import pyarrow.compute as pc

    from sft_exp.constants import IGNORE_INDEX
    from sft_exp.data.scan import record_batches

    end = end_of_turn_token(template, tokenizer)
    if end is None:
        return {"token": None, "id": None, "trained": 0, "supervised": None, "share": None}
    trained = supervised = 0
    for batch in record_batches(train, ["labels", "position_ids"]):
        labels, positions = (pc.list_flatten(batch.column(name)).to_numpy() for name in ("labels", "position_ids"))
        targets = (labels != IGNORE_INDEX) & (positions != 0)
        supervised += int(targets.sum())
        trained += int(np.count_nonzero(labels[targets] == end[1]))
    return {"token": end[0], "id": end[1], "trained": trained, "supervised": supervised,
            "share": round(trained / supervised, 6) if supervised else 0.0}


def save_generation_config(model, folder) -> None:
    """generation_config.json into a saved folder that lacks one (an adapter's: peft saves none), so
    whoever serves base + adapter from it stops where the run trained the model to."""
    from pathlib import Path

    model = getattr(model, "module", model)  # DDP
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if config is not None and not (Path(folder) / "generation_config.json").is_file():
        config.save_pretrained(str(folder))
