"""Sweeps on Optuna behind `hydra/sweeper=sft_optuna`: the search space, the study's storage, the ask-and-tell
loop with resume and take-over, pruning inside a job, and seeds as replicates. The Hydra plugin itself is a thin
class in hydra_plugins/sft_exp_sweeper."""
