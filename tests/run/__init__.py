"""Launching: torchrun ranks (DDP, FSDP2, ZeRO), sequence parallelism, several nodes, SLURM, hub pushes."""
