"""`python -m sft_exp.reproduce`: the same command as `python -m sft_exp reproduce` (sft_exp/tools/reproduce.py)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("reproduce"))
