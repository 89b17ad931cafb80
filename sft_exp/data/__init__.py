"""The data pipeline: sources -> formats -> chat template -> tokens + loss masks -> mixture -> packing.

The trainer uses four names: `validate_data_config` (cheap checks before anything loads),
`prepare_datasets` (returns `PreparedData`) and `SFTCollator`.
"""
from sft_exp.data.collator import SFTCollator
from sft_exp.data.prepare import PreparedData, prepare_datasets
from sft_exp.data.validate import validate_data_config

__all__ = ["PreparedData", "SFTCollator", "prepare_datasets", "validate_data_config"]
