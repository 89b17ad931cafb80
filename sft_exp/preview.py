"""`python -m sft_exp.preview`: the command line of sft_exp.tools.preview (the tools live in sft_exp/tools/)."""
import sys

from sft_exp.tools.preview import main

if __name__ == "__main__":
    sys.exit(main())
