"""Bring your recipe: a TRL CLI config or an open-r1 SFT recipe (and the accelerate config it was launched with)
as a Hydra experiment that trains what TRL would. Every field lands in its sft_exp key or stops the import.

  read          the file, and whether it is a recipe at all
  known         what TRL / open-r1 read (field names from their source), TRL's defaults, old field names
  rows          Row (a field -> its settings, and where the meaning differs), Recipe (values or TRL's defaults)
  model_data    model.*, data.*, peft, the chat template          training  optimizer, memory, trainer.*, eval
  hub_and_evals hub pushes, open-r1's benchmarks                  accelerate_config  distributed, launch command
  convert       every field through its handler + TRL's defaults  experiment  rows -> the experiment file
  table         the printed table                                 check  the file composes with sft_exp's config
  cli           python -m sft_exp.import_recipe
"""
