"""Training: losses, the LM head, the trainer, arguments, exact resume, segments, the ledger, memory, TRL parity."""
