"""What the embedded default ships with the package: the demo tokenizer and chat template (tokenizer/), the demo
train and held-out rows (demo/), the program that regenerates them (build.py) and the check that the demo tasks
are learnable in the default's budget (check_learnable.py)."""
