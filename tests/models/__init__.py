"""Models: the loader and presets, PEFT adapters, EOS and stop tokens, padding-free (varlen) attention."""
