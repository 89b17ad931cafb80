"""The data pipeline: sources -> formats -> chat template -> tokens + loss masks -> mixture -> packing.

A run uses: `DataSettings` (what `data.*` builds; checks itself when built), `prepare_datasets`
(returns `PreparedData`), `describe` (its one-line summary) and `SFTCollator`.
"""
from sft_exp.data.collator import SFTCollator, collator_for
from sft_exp.data.prepare import PreparedData, prepare_datasets
from sft_exp.data.settings import DataSettings, Source
from sft_exp.data.summary import describe

__all__ = ["DataSettings", "PreparedData", "SFTCollator", "Source", "collator_for", "describe", "prepare_datasets"]
