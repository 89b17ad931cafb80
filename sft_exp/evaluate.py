"""`python -m sft_exp.evaluate`: the same command as `python -m sft_exp evaluate` (sft_exp/tools/evaluate.py)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("evaluate"))
