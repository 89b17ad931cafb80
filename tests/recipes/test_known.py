"""What the importer knows of TRL without importing it (field names parsed from TRL's and transformers' source,
TRL's defaults written as a table) against the installed TRL itself."""

from __future__ import annotations

import dataclasses

import trl

from sft_exp.recipe_import.known import STALE, TRL_DEFAULTS, training_argument_fields, trl_fields


def _trl_default(name: str):
    for cls in (trl.ScriptArguments, trl.ModelConfig, trl.SFTConfig):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name in fields:
            f = fields[name]
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    raise KeyError(name)


def test_trl_defaults_are_the_installed_trls():
    actual = {name: _trl_default(name) for name in TRL_DEFAULTS}
    actual = {name: getattr(value, "value", value) for name, value in actual.items()}  # enums as names
    assert actual == TRL_DEFAULTS


def test_parsed_field_names_are_every_field_trl_sft_reads():
    from transformers import TrainingArguments

    classes = (trl.ScriptArguments, trl.SFTConfig, trl.ModelConfig, trl.DatasetMixtureConfig)
    expected = {f.name for cls in classes for f in dataclasses.fields(cls)}
    assert set(trl_fields()) == expected
    assert training_argument_fields() == {f.name for f in dataclasses.fields(TrainingArguments)}


def test_stale_names_are_gone_from_trl_and_their_new_names_are_there():
    owners = trl_fields()
    assert not set(STALE) & set(owners)
    assert {new for new in STALE.values() if new} <= set(owners)
