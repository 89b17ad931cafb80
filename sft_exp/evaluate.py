"""`python -m sft_exp.evaluate`: the command line of sft_exp.tools.evaluate (the tools live in sft_exp/tools/)."""
import sys

from sft_exp.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
