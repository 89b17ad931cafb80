"""The tools: export, the sweep report and its figures, reproduce, subcommands of the sft-exp command."""
