"""`python -m sft_exp.report`: the same command as `python -m sft_exp report` (sft_exp/tools/report.py)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("report"))
