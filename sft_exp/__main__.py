"""`python -m sft_exp [overrides]`: compose the config with Hydra and run one training job."""
import logging
import sys

import hydra
from omegaconf import DictConfig

import sft_exp.config  # noqa: F401  registers the schemas and the ${asset:...} resolver
from sft_exp.errors import UserError
from sft_exp.paths import config_dir

log = logging.getLogger("sft_exp")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    from sft_exp.train import run

    try:
        return run(cfg)
    except UserError as e:
        # A user mistake: the message says what and where; a traceback would only bury it.
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
