"""`python -m sft_exp.report`: the command line of sft_exp.tools.report (the tools live in sft_exp/tools/)."""
import sys

from sft_exp.tools.report import main

if __name__ == "__main__":
    sys.exit(main())
