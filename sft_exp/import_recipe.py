"""`python -m sft_exp.import_recipe RECIPE.yaml [--accelerate-config FILE] [-o conf/experiment/NAME.yaml]
[--allow-unmapped]`: a TRL or open-r1 recipe as an sft_exp experiment (the code: sft_exp/recipe_import/)."""
import sys

from sft_exp.recipe_import.cli import main

if __name__ == "__main__":
    sys.exit(main())
