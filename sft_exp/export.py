"""`python -m sft_exp.export`: the same command as `python -m sft_exp export` (sft_exp/tools/export.py)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("export"))
