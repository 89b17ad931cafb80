"""The private APIs of datasets and transformers in sft_exp.compat still do what sft_exp relies on.

A failure here after an upgrade names the API that changed; fix sft_exp/compat.py, nothing else.
"""

from __future__ import annotations

import datasets
import pyarrow as pa
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sft_exp import compat
from sft_exp.data.templates import CHATML


def test_row_indices_are_the_rows_a_selected_dataset_shows_in_order():
    dataset = datasets.Dataset.from_dict({"x": [10, 11, 12, 13, 14]})
    assert compat.row_indices(dataset) is None  # fresh: all rows, in order
    selected = dataset.select([3, 0, 4]).shuffle(seed=0)
    indices = compat.row_indices(selected)
    assert isinstance(indices, (pa.Array, pa.ChunkedArray))
    assert dataset.data.table.take(indices).column("x").to_pylist() == selected["x"]
    mixed = datasets.concatenate_datasets([selected, dataset.select([1])])
    taken = mixed.data.table.take(compat.row_indices(mixed)).column("x").to_pylist()
    assert taken == mixed["x"]  # concatenation keeps one indices mapping over one table


def test_dataset_fingerprint_identifies_content_and_history(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"x": 1}\n{"x": 2}\n')
    first = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    again = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    fingerprint = compat.dataset_fingerprint(first)
    assert isinstance(fingerprint, str) and fingerprint == compat.dataset_fingerprint(again)
    assert compat.dataset_fingerprint(first.select([1])) != fingerprint
    path.write_text('{"x": 1}\n{"x": 3}\n')
    changed = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert compat.dataset_fingerprint(changed) != fingerprint


def test_compiled_chat_template_renders_like_transformers():
    compile_template = compat.compile_jinja_template()
    assert compile_template is not None, "transformers no longer has _compile_jinja_template (the fast path is off)"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    variables = {"bos_token": "<s>", "eos_token": "</s>"}
    expected = render_jinja_template(conversations=[messages], chat_template=CHATML, **variables)[0][0]
    template = compile_template(CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    kwargs = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": False}
    assert template.render(**kwargs, **variables) == expected
    assert compile_template(CHATML).render(**kwargs, **variables) == expected  # it knows {% generation %}


def test_attn_implementation_is_what_the_model_runs():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    assert compat.attn_implementation(AutoModelForCausalLM.from_config(config, attn_implementation="eager")) == "eager"
    assert compat.attn_implementation(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")) == "sdpa"


def test_set_name_or_path_is_what_peft_records_as_the_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = AutoModelForCausalLM.from_config(config)
    compat.set_name_or_path(model, str(tmp_path / "base"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert peft_model.peft_config["default"].base_model_name_or_path == str(tmp_path / "base")


def test_keep_generation_config_stops_generate_rebuilding_it_from_the_model_config():
    from transformers import GenerationConfig, LlamaConfig

    generation = GenerationConfig.from_model_config(LlamaConfig(eos_token_id=2))
    assert generation._from_model_config is True
    compat.keep_generation_config(generation)
    assert generation._from_model_config is False


def test_forget_accelerate_preparation_removes_preparations_mark():
    import torch
    from accelerate import Accelerator

    model = Accelerator(cpu=True).prepare(torch.nn.Linear(2, 2))
    assert compat.forget_accelerate_preparation(model) is True
    assert not hasattr(model, "_is_accelerate_prepared")
    assert compat.forget_accelerate_preparation(model) is False


def test_optuna_ids_are_the_storage_ids():
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="s")
    trial = study.ask()
    assert study._storage.get_trial(compat.trial_id(trial)).number == trial.number
    assert study._storage.get_study_name_from_id(compat.study_id(study)) == "s"


def test_job_return_value_is_what_a_failed_hydra_job_raised():
    from hydra.core.utils import JobReturn, JobStatus

    error = ValueError("boom")
    result = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert compat.job_return_value(result) is error


def test_wrap_hydra_job_runner_runs_what_hydra_main_runs_through_the_wrapper(monkeypatch):
    import hydra._internal.utils as hydra_utils

    monkeypatch.setattr(hydra_utils, "run_and_report", hydra_utils.run_and_report)  # restored after the test
    seen = []
    compat.wrap_hydra_job_runner(lambda func: lambda: seen.append("wrapped") or func())
    compat.wrap_hydra_job_runner(lambda func: lambda: seen.append("twice") or func())  # idempotent
    assert hydra_utils.run_and_report(lambda: 7) == 7
    assert seen == ["wrapped"]


def test_hydra_writes_a_jobs_files_through_save_config_before_the_task_runs():
    """sft_exp.training.relaunch holds back Hydra's .hydra/ writes of a folder that holds a run: through
    `hydra.core.utils._save_config(cfg, filename, output_dir)`, which run_job calls before the task function."""
    import inspect

    import hydra.core.utils as hydra_core_utils

    assert list(inspect.signature(hydra_core_utils._save_config).parameters) == ["cfg", "filename", "output_dir"]
    source = inspect.getsource(hydra_core_utils.run_job)
    assert source.index('_save_config(task_cfg, "config.yaml"') < source.index("task_function(task_cfg)")


def test_ulysses_handler_takes_the_models_own_attention_by_name():
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    handler = DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=True, sp_attn_implementation="sdpa")
    compat.name_ulysses_attention(handler, "sdpa_varlen")
    assert handler.sp_attn_implementation == "sdpa_varlen"  # what accelerate hands DeepSpeed at prepare


def test_trainer_shards_context_parallel_buffers_in_a_method_sft_exp_extends():
    import inspect

    from transformers import Trainer

    # SFTTrainer._prepare_context_parallel_inputs adds sft_exp's per-token columns to the Trainer's buffers.
    parameters = list(inspect.signature(Trainer._prepare_context_parallel_inputs).parameters)
    assert parameters == ["self", "model", "inputs"]


def test_ulysses_loader_adapter_keeps_what_a_resume_rebuilds_it_from():
    import pytest

    pytest.importorskip("deepspeed")
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    loader = [{"input_ids": None}]
    adapter = UlyssesSPDataLoaderAdapter(loader, sp_rank=1, sp_group=None, sp_world_size=2, device="cpu")
    # sft_exp.run.sequence_parallel.resumed_dataloader reads these (public attributes, no accessor).
    assert (adapter.dl, adapter.sp_rank, adapter.sp_group, adapter.sp_world_size, adapter.device) == (
        loader,
        1,
        None,
        2,
        "cpu",
    )


@pytest.mark.parametrize("owner", sorted(compat.PRIVATE_OVERRIDES))
def test_every_private_method_sft_exp_overrides_still_exists(owner):
    import importlib

    module, _, name = owner.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    missing = [method for method in compat.PRIVATE_OVERRIDES[owner] if not callable(getattr(cls, method, None))]
    assert not missing, f"{owner} no longer has {missing}: sft_exp's override of it is dead code now"


def test_datasets_offline_fails_at_once_for_data_not_on_this_machine():
    import time

    import pytest
    from huggingface_hub import constants

    before, start = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE), time.monotonic()
    with compat.datasets_offline():
        assert datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE
        with pytest.raises(Exception, match="(?i)offline"):
            datasets.load_dataset("no-such-org/no-such-dataset", split="test")
    assert time.monotonic() - start < 30  # no network retries
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before  # restored


@pytest.mark.parametrize("module_name", sorted(compat.ENGINE_CHECKS))
def test_each_engine_check_sft_exp_replaces_still_guards_the_engines_import(module_name):
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    checks, _ = compat.ENGINE_CHECKS[module_name]
    source = inspect.getsource(module)
    for name in checks:
        assert callable(getattr(module, name, None)), f"{module_name} no longer has {name}: the patch is dead code now"
        assert f"if {name}():" in source, f"{module_name} no longer calls {name}: the engine may load elsewhere now"


def test_an_engine_check_says_loaded_where_it_said_installed(monkeypatch):
    import importlib.util
    import sys
    import types

    import accelerate.utils.other

    spec = importlib.util.find_spec("deepspeed")  # installed (the real check's answer), without importing it
    compat.load_engines_only_where_used()
    check = accelerate.utils.other.is_deepspeed_available
    compat.load_engines_only_where_used()
    assert accelerate.utils.other.is_deepspeed_available is check  # idempotent: wrapped once
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    assert check() is False and "deepspeed" not in sys.modules  # not loaded: nothing can be a DeepSpeedEngine
    loaded = types.ModuleType("deepspeed")
    loaded.__spec__ = spec
    monkeypatch.setitem(sys.modules, "deepspeed", loaded)  # loaded (a ZeRO run's prepare): as installed
    assert check() is (spec is not None)
