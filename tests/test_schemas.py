"""One schema per component: the structured configs Hydra checks are generated from the components' own
source (sft_exp.schemas), so they must equal what the imported classes really accept."""

import dataclasses
import inspect
import subprocess
import sys

import pytest
from omegaconf import MISSING

from sft_exp.config import TrainerConfig, option_schemas
from sft_exp.schemas import component_schema
from tests.helpers import REPO, compose

OURS = [
    "sft_exp.data.settings.DataSettings", "sft_exp.data.settings.Source", "sft_exp.models.loader.ModelLoader",
    "sft_exp.training.losses.NLLLoss", "sft_exp.training.losses.DFTLoss", "sft_exp.training.memory.NoMemoryStrategy",
    "sft_exp.training.memory.GradientCheckpointing", "sft_exp.training.memory.ActivationOffloading",
    "sft_exp.loggers.wandb.WandbLogger", "sft_exp.loggers.tensorboard.TensorBoardLogger",
    "sft_exp.loggers.mlflow.MLflowLogger",
]  # fmt: skip


def _real_defaults(cls) -> dict:
    """What the imported class accepts: its dataclass fields or its __init__ keywords, with defaults."""
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = MISSING
        return out
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {
        p.name: (MISSING if p.default is p.empty else p.default)
        for p in params
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _schema_defaults(schema) -> dict:
    out = {}
    for f in dataclasses.fields(schema):
        if not f.name.startswith("_"):
            out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


@pytest.mark.parametrize("target", OURS)
def test_generated_schema_has_the_components_fields_and_defaults(target):
    import importlib

    module, _, name = target.rpartition(".")
    real = _real_defaults(getattr(importlib.import_module(module), name))
    generated = _schema_defaults(component_schema(target))
    assert generated.keys() == real.keys()
    for key, value in real.items():  # tuples in a signature become lists in a config
        if dataclasses.is_dataclass(value):  # a nested dataclass (data.decontamination): its generated schema's fields
            assert dataclasses.asdict(generated[key]) == dataclasses.asdict(value), key
            continue
        assert generated[key] == (list(value) if isinstance(value, tuple) else value), key


def test_every_option_yaml_merges_onto_a_schema_of_its_own_target():
    schemas = option_schemas()
    assert {"loss/nll", "loss/dft", "memory/offload", "logger/wandb", "model/model", "data/data"} <= schemas.keys()
    assert dataclasses.fields(schemas["loss/dft"])[0].default == "sft_exp.training.losses.DFTLoss"


def test_trainer_schema_adds_the_trainers_own_fields_from_its_source():
    from sft_exp.training.trainer import SFTTrainingArguments

    names = {f.name for f in dataclasses.fields(TrainerConfig)}
    own = {f.name for f in dataclasses.fields(SFTTrainingArguments)} - {
        f.name for f in dataclasses.fields(SFTTrainingArguments.__mro__[1])
    }
    assert own and own <= names


@pytest.mark.parametrize("overrides, key", [
    (["loss.chunk_size=abc"], "chunk_size"), (["memory=offload", "memory.min_offload_bytes=8"], None),
    (["memory=offload", "memory.min_offload_bytez=1"], "min_offload_bytez"), (["model.dtypo=bf16"], "dtypo"),
    (["data.sources=[{pth: x.jsonl}]"], "pth"), (["data.sources=[{path: x, weight: heavy}]"], "weight"),
    (["logger.wandb.projct=x"], "projct"), (["trainer.router_aux_loss_coef=high"], "router_aux_loss_coef"),
])  # fmt: skip
def test_typos_and_wrong_types_fail_when_the_config_is_composed(overrides, key):
    if key is None:
        compose(overrides)  # composes fine
        return
    with pytest.raises(Exception, match=key):
        compose(overrides)


def test_composing_a_config_and_checking_data_settings_import_neither_torch_nor_datasets():
    """What runs before anything loads (composing, DataSettings' checks of every source and template) stays light."""
    code = (
        "import sys; from hydra.utils import instantiate; from tests.helpers import compose; "
        "settings = instantiate(compose(['data.chat_template=chatml']).data); "
        "print(type(settings).__name__, sorted(m for m in ('torch', 'datasets', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "DataSettings []"


def test_a_composed_config_pickles_into_a_fresh_process_as_launchers_send_it():
    """The submitit/SLURM launchers pickle the composed config to the job: generated schemas must be found
    by reference there (a by-value copy loses dataclasses' MISSING sentinel and fails to compose)."""
    import pickle

    from omegaconf import OmegaConf

    data = pickle.dumps(compose(["loss=dft", "memory=offload", "logger=[wandb,mlflow]"]))
    code = (
        "import pickle, sys; from omegaconf import OmegaConf; cfg = pickle.loads(sys.stdin.buffer.read()); "
        "print(OmegaConf.get_type(cfg.data.sources[0]).__name__, OmegaConf.get_type(cfg.loss).__name__, "
        "OmegaConf.to_container(cfg.memory)['_target_'])"
    )
    out = subprocess.run([sys.executable, "-c", code], input=data, cwd=REPO, capture_output=True, check=True)
    assert out.stdout.decode().split() == [
        "SourceSchema",
        "DFTLossSchema",
        "sft_exp.training.memory.ActivationOffloading",
    ]
    assert OmegaConf.get_type(pickle.loads(data).trainer).__name__ == "TrainerConfig"
