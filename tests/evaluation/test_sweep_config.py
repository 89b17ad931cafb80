"""sweeps/optuna_task.yaml composes on the sft_optuna sweeper, maximizes a task score that its runs report
at every evaluation (what the pruner needs) and sweeps keys that exist."""

from __future__ import annotations

from tests.helpers import REPO


def test_the_task_score_sweep_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sft_exp.config  # noqa: F401  registers the schemas
    from sft_exp.paths import config_dir

    with initialize_config_dir(str(REPO / "sweeps"), version_base="1.3"):
        cfg = compose("optuna_task", overrides=[f"hydra.searchpath=[file://{config_dir()}]"], return_hydra_config=True)
    assert cfg.objective == "eval_heldout/exact_match"
    assert cfg.hydra.sweeper.direction == "maximize"
    assert (
        cfg.hydra.sweeper._target_.endswith("SftOptunaSweeper")
        and cfg.hydra.sweeper.pruner.type == "successive_halving"
    )
    assert cfg.trainer.eval_steps and cfg.trainer.eval_steps < cfg.trainer.max_steps  # intermediate values to prune on
    task, metric = cfg.objective[len("eval_") :].split("/")
    assert task in cfg.evals and cfg.evals[task].scorer == metric
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, key
