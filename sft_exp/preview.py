"""`python -m sft_exp.preview`: the same command as `python -m sft_exp preview` (sft_exp/tools/preview.py)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("preview"))
