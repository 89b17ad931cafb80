"""`data.decontamination` and `data.deduplicate` as DataSettings takes them: built and checked when the
settings are, so a mistake fails before anything loads (no torch, datasets or numpy here)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sft_exp.errors import ConfigError

MODES = ("report", "drop", "error", "off")
DEDUPLICATE = ("off", "exact")
# Below this, n-grams are a few common words: nearly any two texts share one.
MIN_NGRAM = 4
KEY = "data.decontamination"


def _against(entries: Any) -> list:
    from sft_exp.data.settings import AgainstFile, unknown_key_message
    from sft_exp.data.sources import looks_local

    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{KEY}.against: expected a list of files like [{{path: eval.jsonl, column: question}}]")
    files = []
    for i, entry in enumerate(entries):
        key = f"{KEY}.against[{i}]"
        if isinstance(entry, AgainstFile):
            entry = dataclasses.asdict(entry)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"{key}.path: each entry needs a `path` (a file, folder or hub dataset id)")
        try:
            against = AgainstFile(**{k: v for k, v in entry.items() if not k.startswith("_")})
        except TypeError as err:
            raise ConfigError(f"{key}.{unknown_key_message(err, AgainstFile)}") from None
        if looks_local(against.path) and not Path(against.path).expanduser().exists():
            column = f" (column {against.column!r})" if against.column else ""
            raise ConfigError(f"{key}.path: {against.path}{column} does not exist; check the path")
        files.append(against)
    return files


def as_decontamination(value: Any, deduplicate: Any):
    """A checked Decontamination from itself or a mapping (Hydra's node, or a dict in Python)."""
    from sft_exp.data.settings import Decontamination, unknown_key_message

    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, dict):
        raise ConfigError(f"{KEY}: expected a mapping like {{mode: report, ngram: 8, against: []}}, got {value!r}")
    try:
        settings = Decontamination(**{k: v for k, v in value.items() if not k.startswith("_")})
    except TypeError as err:
        raise ConfigError(f"{KEY}.{unknown_key_message(err, Decontamination)}") from None
    if settings.mode not in MODES:
        raise ConfigError(f"{KEY}.mode={settings.mode!r}: use one of {', '.join(MODES)}")
    if isinstance(settings.ngram, bool) or not isinstance(settings.ngram, int) or settings.ngram < MIN_NGRAM:
        raise ConfigError(
            f"{KEY}.ngram={settings.ngram!r}: must be an integer >= {MIN_NGRAM}; shorter n-grams are runs of common "
            "words that nearly every text shares (s1 and open-r1 use 8)"
        )
    settings.against = _against(settings.against or [])
    if deduplicate not in DEDUPLICATE:
        raise ConfigError(f"data.deduplicate={deduplicate!r}: use off (count exact duplicates) or exact (drop them, "
                          "keeping the first)")
    return settings
