"""Hydra finds this sweeper by scanning the hydra_plugins namespace; the logic is in sft_exp.sweeps."""
