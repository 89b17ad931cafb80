"""Sweeps: search spaces, samplers, the shared study, pruning, replicates, resume, PostgreSQL, hosts that die."""
