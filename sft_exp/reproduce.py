"""`python -m sft_exp.reproduce`: the command line of sft_exp.tools.reproduce (the tools live in sft_exp/tools/)."""
import sys

from sft_exp.tools.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
