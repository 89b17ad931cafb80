"""`python -m sft_exp.import_recipe RECIPE.yaml [--accelerate-config FILE] [-o conf/experiment/NAME.yaml]
[--allow-unmapped]`: the same command as `python -m sft_exp import_recipe ...` (sft_exp/recipe_import/)."""

import sys

from sft_exp.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("import_recipe"))
