"""PEFT adapters: presets, refusals before loading, an adapter-only run folder, and export --merge."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hydra.utils import instantiate

from sft_exp.errors import ConfigError
from sft_exp.preflight import validate_config
from tests.helpers import compose

# A few LoRA steps on a slice of the demo data: the adapter must move, and checkpoints 2 and 4 exist.
LORA_RUN = [
    "peft=lora",
    "optimizer.lr=1e-2",
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.save_steps=2",
    "trainer.save_total_limit=3",
    "trainer.per_device_train_batch_size=4",
    "evals=none",
    "data.sources.0.max_samples=48",
    "data.sources.0.eval_max_samples=8",
    "data.max_length=64",
    "logger=none",
]


def train(run_dir, *overrides):
    from sft_exp.train import run

    run(compose([*LORA_RUN, f"run_dir={run_dir}", *overrides]))


@pytest.mark.parametrize("option, use_dora", [("lora", False), ("dora", True)])
def test_lora_presets_build_peft_configs(option, use_dora):
    cfg = compose([f"peft={option}", "peft.r=4"])
    lora = instantiate(cfg.peft, _convert_="all")
    assert type(lora).__name__ == "LoraConfig"
    assert (lora.r, lora.use_dora, lora.target_modules) == (4, use_dora, "all-linear")
    assert lora.task_type == "CAUSAL_LM"


def test_preset_targets_flow_into_the_adapter():
    cfg = compose(["peft=lora", "model=tiny_moe"])
    assert list(cfg.peft.target_modules) == list(cfg.model.lora_target_modules)
    assert "q_proj" in cfg.peft.target_modules


def test_qlora_on_a_model_built_from_config_is_refused():
    with pytest.raises(ConfigError, match="model.name_or_path"):
        validate_config(compose(["peft=qlora"]))  # model=tiny has no pretrained weights to quantize


def test_qlora_without_bitsandbytes_is_refused_before_loading(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )  # as on a machine without the package
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')  # a local "model": never loaded
    cfg = compose(["peft=qlora", "model=qwen2_5_0_5b", f"model.name_or_path={tmp_path}"])
    with pytest.raises(ConfigError, match="pip install 'sft_exp\\[qlora\\]'") as err:
        validate_config(cfg)
    assert "peft=lora" in str(err.value)  # says what to do instead


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("target_modules", "[q_proj,qkv_proj]", "qkv_proj"),
        ("target_modules", "'.*\\.attention\\.query'", "regex"),
        ("modules_to_save", "[embed_token]", "embed_token"),
    ],
)
def test_targets_that_match_nothing_are_refused(key, value, named):
    cfg = compose(["peft=lora", f"peft.{key}={value}"])
    with pytest.raises(ConfigError, match=f"peft.{key}") as err:
        validate_config(cfg)
    message = str(err.value)
    assert named in message and "q_proj" in message  # lists the layers that do exist


def test_valid_targets_pass():
    validate_config(
        compose(["peft=lora", "peft.target_modules=[q_proj,v_proj]", "peft.modules_to_save=[embed_tokens]"])
    )


# ----------------------------------------------------------------------------- a LoRA run end to end
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    train(run_dir)
    return run_dir


def test_run_folder_holds_the_adapter_only(lora_run):
    for folder in (lora_run / "model", lora_run / "checkpoints" / "checkpoint-4"):
        names = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
        assert "model.safetensors" not in names
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert 0 < summary["trainable_params"] < summary["total_params"] / 5
    # The base built from config is kept once, beside the adapter, for export.
    adapter = (lora_run / "model" / "adapter_model.safetensors").stat().st_size
    base = (lora_run / "base_model" / "model.safetensors").stat().st_size
    assert adapter <= base / 10, (adapter, base)


def test_export_merge_equals_base_plus_adapter(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_exp.tools.export import main

    out = tmp_path / "merged"
    assert main([str(lora_run), "--merge", "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(lora_run / "base_model")
    with_adapter = PeftModel.from_pretrained(base, lora_run / "model")
    ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        without = with_adapter.get_base_model()  # adapters still active: compare against disabled below
        got = merged(input_ids=ids).logits
        with with_adapter.disable_adapter():
            base_only = without(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base_only).abs().max() > 1e-4  # the adapter trained: merging changed the model


def test_export_refuses_a_full_model_run(tmp_path):
    from sft_exp.tools.export import main

    (tmp_path / "model").mkdir()
    (tmp_path / "resolved_config.yaml").write_text("model: {}\n")
    assert main([str(tmp_path), "--merge"]) == 2


def test_resume_with_an_adapter_is_exact(lora_run, tmp_path):
    from safetensors.torch import load_file

    resumed = tmp_path / "run"
    shutil.copytree(lora_run, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    train(resumed, "resume_from_checkpoint=true")  # from checkpoint-2, over the rebuilt base

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert losses(resumed) == losses(lora_run)
    got = load_file(resumed / "model" / "adapter_model.safetensors")
    expected = load_file(lora_run / "model" / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    assert all(got[k].equal(expected[k]) for k in expected)  # bitwise


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    """A QLoRA run on a saved tiny Qwen2: its base loads in NF4 (bitsandbytes' CPU backend without CUDA)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path
    from tests.helpers import tiny_causal_lm

    folder = tmp_path_factory.mktemp("qlora")
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    tiny_causal_lm(vocab_size=len(tokenizer), hidden_size=128).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    run_dir = folder / "run"
    train(run_dir, "peft=qlora", "model=qwen2_5_0_5b", f"model.name_or_path={folder / 'base'}", "model.dtype=float32")
    return run_dir


def test_qlora_trains_an_nf4_base_and_saves_the_adapter(qlora_run):
    from safetensors.torch import load_file

    summary = json.loads((qlora_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["trainable_params"] < summary["total_params"] / 5
    adapter = load_file(qlora_run / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert not (qlora_run / "base_model").exists()  # a pretrained base is found again from model.name_or_path
    rows = [json.loads(line) for line in (qlora_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(map(math.isfinite, losses))


def test_qlora_base_is_nf4_and_export_merge_matches_base_plus_adapter(qlora_run, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_exp.tools.export import main

    cfg = compose(
        ["peft=qlora", "model=qwen2_5_0_5b", f"model.name_or_path={qlora_run.parent / 'base'}", "model.dtype=float32"]
    )
    quantized = instantiate(cfg.model, _convert_="all")._pretrained()  # what the run trained on
    layers = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_state.quant_type == "nf4" for m in layers)

    out = tmp_path / "merged"
    assert main([str(qlora_run), "--merge", "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32 and not getattr(merged, "is_quantized", False)
    # The merge is into the float base (model.dtype), so it equals float base + adapter.
    base = AutoModelForCausalLM.from_pretrained(qlora_run.parent / "base", dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, qlora_run / "model")
    ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits
        with with_adapter.disable_adapter():
            base_only = with_adapter(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base_only).abs().max() > 1e-4  # the adapter trained: merging changed the model


# In a fresh process, as a run loads and wraps it: the engine checks answer "loaded" (compat), and the quantized
# load is what loads bitsandbytes, so peft must still give each 4-bit layer its bitsandbytes LoRA layer.
QLORA_LAYERS = """
import sys
from hydra.utils import instantiate
from sft_exp import compat
from sft_exp.models.adapters import wrap_with_adapter
from tests.helpers import compose

compat.load_engines_only_where_used()
cfg = compose(["peft=qlora", "model=qwen2_5_0_5b", f"model.name_or_path={sys.argv[1]}", "model.dtype=float32"])
model = wrap_with_adapter(instantiate(cfg.model, _convert_="all")._pretrained(), instantiate(cfg.peft, _convert_="all"))
from peft.tuners.lora.bnb import Linear4bit
print("4-bit LoRA layers:", sum(isinstance(m, Linear4bit) for m in model.modules()))
"""


def test_qlora_in_a_fresh_process_wraps_its_4bit_layers_in_bitsandbytes_lora_layers(qlora_run):
    import subprocess
    import sys

    from tests.helpers import REPO, TEST_ENV

    done = subprocess.run(
        [sys.executable, "-c", QLORA_LAYERS, str(qlora_run.parent / "base")],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("4-bit LoRA layers:")[1]) > 0, done.stdout


def test_wrapping_in_lora_raises_no_future_warning():
    """peft reads a transformers property deprecated for v6: every LoRA run printed a FutureWarning about it."""
    import warnings

    from peft import LoraConfig

    from sft_exp.models.adapters import wrap_with_adapter
    from tests.helpers import tiny_causal_lm

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        wrap_with_adapter(tiny_causal_lm(), LoraConfig(r=4, target_modules=["q_proj"]))
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
