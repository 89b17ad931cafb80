"""The training core: the Trainer subclass, the SFT forward and chunked LM head, losses, metrics,
memory strategies and checkpoints."""
