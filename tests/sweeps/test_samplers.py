"""Samplers and pruners by name: each builds the Optuna class it names; a wrong name or setting is one clear error."""

from __future__ import annotations

import optuna
import pytest

from sft_exp.errors import ConfigError
from sft_exp.sweeps.samplers import PRUNERS, SAMPLERS, build_pruner, build_sampler


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_every_sampler_name_builds_its_sampler(kind):
    sampler = build_sampler({"type": kind, "seed": 1}, grid={"x": [1, 2]})
    assert isinstance(sampler, getattr(optuna.samplers, SAMPLERS[kind]))


def draw(sampler) -> float:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=sampler).ask().suggest_float("x", 0, 1)


def test_a_resumed_study_moves_the_seed_on_and_a_stray_setting_is_dropped_or_refused():
    assert draw(build_sampler({"type": "random", "seed": 5})) == draw(build_sampler({"type": "random", "seed": 5}))
    assert draw(build_sampler({"type": "random", "seed": 5}, seed_offset=3)) != draw(
        build_sampler({"type": "random", "seed": 5})
    )
    grid = build_sampler({"type": "grid", "seed": 0, "n_startup_trials": 5}, grid={"x": [1]})  # a TPE setting: dropped
    assert isinstance(grid, optuna.samplers.GridSampler)
    with pytest.raises(ConfigError, match=r"\['n_startup_trails'\] is no setting of any sampler"):
        build_sampler({"type": "tpe", "n_startup_trails": 5})
    with pytest.raises(ConfigError, match="hydra.sweeper.sampler.type='anneal' is not one of tpe, random, grid"):
        build_sampler({"type": "anneal"})


@pytest.mark.parametrize("kind", sorted(PRUNERS))
def test_every_pruner_name_builds_its_pruner(kind):
    kwargs = {"upper": 1.0} if kind == "threshold" else {"percentile": 25.0} if kind == "percentile" else {}
    assert isinstance(build_pruner({"type": kind, **kwargs}), getattr(optuna.pruners, PRUNERS[kind]))
    assert build_pruner(None) is None and build_pruner({"type": None}) is None
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner"):
        build_pruner({"type": "median", "patience": 3})


@pytest.mark.parametrize("lag_s", [0.0, 0.3])
def test_two_sweepers_claiming_one_abandoned_trial_at_once_run_it_once(tmp_path, lag_s):
    import threading
    import time

    from sft_exp import compat
    from sft_exp.sweeps.resume import claim
    from sft_exp.sweeps.storage import open_storage

    url = f"journal:{tmp_path / 'optuna.journal'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    trial_id = compat.trial_id(study.ask())  # left RUNNING, as by a sweeper that died
    both_found_it = threading.Barrier(2)
    won = []

    def sweeper(delay):  # each sweeper process has its own storage object on the same journal file
        storage = open_storage(url)
        both_found_it.wait()
        time.sleep(delay)
        won.append(claim(storage, trial_id, settle_s=1.0))

    threads = [threading.Thread(target=sweeper, args=(delay,)) for delay in (0.0, lag_s)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False, True]
