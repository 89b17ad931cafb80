"""The search space: every accepted form becomes the Optuna distribution it says; a bad one names the
parameter and the accepted forms."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sft_exp.errors import ConfigError
from sft_exp.sweeps.space import grid_of, override, parse_space


def test_every_accepted_form_becomes_its_distribution():
    distributions, fixed = parse_space(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 1e-3))",
            "optimizer.weight_decay": "interval(0.0, 0.1)",
            "peft.r": "range(4, 17, 4)",
            "loss": "nll,dft",
            "memory": "choice(none, checkpointing)",
            "trainer.warmup_steps": {"type": "float", "low": 0, "high": 0.1},
            "peft.alpha": {"type": "int", "low": 8, "high": 64, "log": True},
            "data.packing": {"type": "categorical", "choices": [True, False]},
            "trainer.max_steps": 40,
        },
        ["trainer.logging_steps=5", "optimizer.lr=interval(1e-4, 2e-4)"],
    )
    assert distributions["optimizer.lr"] == FloatDistribution(1e-4, 2e-4)  # the command line wins
    assert distributions["optimizer.weight_decay"] == FloatDistribution(0.0, 0.1)
    assert distributions["peft.r"] == IntDistribution(4, 16, step=4)  # range's stop is excluded, as in Hydra
    assert distributions["loss"] == CategoricalDistribution(["nll", "dft"])
    assert distributions["memory"] == CategoricalDistribution(["none", "checkpointing"])
    assert distributions["trainer.warmup_steps"] == FloatDistribution(0.0, 0.1)
    assert distributions["peft.alpha"] == IntDistribution(8, 64, log=True)
    assert distributions["data.packing"] == CategoricalDistribution([True, False])
    assert sorted(fixed) == ["trainer.logging_steps=5", "trainer.max_steps=40"]
    log_lr = parse_space({"optimizer.lr": "tag(log, interval(1e-5, 1e-3))"}, [])[0]["optimizer.lr"]
    assert log_lr == FloatDistribution(1e-5, 1e-3, log=True)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("tag(log, interval(0.0, 1.0))", "low"),  # log scale from 0
        ("interval(1.0, 0.1)", "low"),  # reversed
        ("tag(sqrt, interval(1e-5, 1e-3))", "unknown tag"),
        ("range(5, 1)", "empty"),
        ("interval(1e-5", "cannot parse"),
        ({"type": "normal", "low": 0, "high": 1}, "is not one of float, int, categorical"),
        ({"type": "float", "low": 0}, "needs `low` and `high`"),
        ({"type": "int", "low": 0, "high": 4, "choices": [1]}, "do not apply"),
        ({"type": "categorical", "choices": "a,b"}, "needs a list"),
    ],
)
def test_a_bad_spec_names_the_parameter_and_the_accepted_forms(spec, says):
    with pytest.raises(ConfigError) as error:
        parse_space({"optimizer.lr": spec}, [])
    assert "hydra.sweeper.params.optimizer.lr" in str(error.value) and says in str(error.value)
    assert "accepted forms" in str(error.value) or "tag" in str(error.value)


def test_the_grid_lists_every_point_and_refuses_a_continuous_interval():
    distributions, _ = parse_space({"loss": "nll,dft", "peft.r": "range(4, 13, 4)"}, [])
    assert grid_of(distributions) == {"loss": ["nll", "dft"], "peft.r": [4, 8, 12]}
    with pytest.raises(ConfigError, match="grid sampler needs choices"):
        grid_of(parse_space({"optimizer.lr": "interval(0.1, 0.2)"}, [])[0])


def test_overrides_read_back_as_the_same_values():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (1e-05, 0.1, 3, True, None, "nll", "a b", "it's", "x=y"):
        parsed = parser.parse_overrides([override("k", value)])[0]
        assert parsed.value() == value, override("k", value)
