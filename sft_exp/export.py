"""`python -m sft_exp.export`: the command line of sft_exp.tools.export (the tools live in sft_exp/tools/)."""
import sys

from sft_exp.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
