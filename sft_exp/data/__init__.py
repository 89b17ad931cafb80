"""The data pipeline: sources -> formats -> chat template -> tokens + loss masks -> mixture -> packing.

A run uses: `DataSettings` (what `data.*` builds; checks itself when built), `prepare_datasets`
(returns `PreparedData`), `describe` (its one-line summary) and `SFTCollator`.

Names are imported on first use: `sft_exp.data.settings` (what composing and checking a config needs)
must not pull in torch and datasets, which the rest of the pipeline does.
"""

import importlib

_WHERE = {
    "DataSettings": "settings", "Source": "settings", "PreparedData": "prepare", "prepare_datasets": "prepare",
    "SFTCollator": "collator", "collator_for": "collator", "describe": "statistics",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sft_exp.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sft_exp.data.{_WHERE[name]}"), name)
