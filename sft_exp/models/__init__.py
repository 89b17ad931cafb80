"""Loading a model and its tokenizer, PEFT adapters, and the per-example attention (sdpa_varlen)."""
