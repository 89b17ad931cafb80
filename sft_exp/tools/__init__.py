"""The command-line tools that work on a finished run folder (`python -m sft_exp.<tool>`)."""
