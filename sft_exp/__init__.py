"""sft_exp: a Hydra-configured experiment framework for supervised fine-tuning of causal LMs."""

__version__ = "0.1.0"
