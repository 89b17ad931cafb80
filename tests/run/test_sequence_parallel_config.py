"""distributed=ulysses / ring, in one process: every bad combination refused before anything loads (one error
each, naming the key and what to set), one process trains plainly, and the pieces that make a split batch
train as one process does (targets shifted before the split, padding never supervised, widths)."""

from __future__ import annotations

import pytest
import torch

from sft_exp.errors import ConfigError
from sft_exp.preflight import validate_config
from tests.helpers import REPO, TEST_ENV, compose, prepared_rows

deepspeed = pytest.importorskip("deepspeed")


def _launched(monkeypatch, world: int, local: int | None = None) -> None:
    """What torchrun sets for rank 0 of `world` processes (`local` per node)."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local or world))


def _refused(overrides, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as err:
        validate_config(compose(overrides))
    return str(err.value)


def test_sp_size_must_divide_the_world_size(monkeypatch):
    _launched(monkeypatch, 2)
    message = _refused(["distributed=ulysses", "distributed.sp_size=3"], r"distributed.sp_size=3 does not divide")
    assert "set distributed.sp_size to one of [1, 2]" in message


def test_sp_size_defaults_to_the_processes_of_a_node_and_must_fit_the_heads(monkeypatch):
    _launched(monkeypatch, 16, local=8)  # 2 nodes of 8: sp_size 8 by default; the tiny model has 4 heads
    message = _refused(["distributed=ulysses"], r"distributed.sp_size=8: Ulysses gives each rank")
    assert "4 attention heads and 2 key/value heads (model.init_config)" in message
    assert "one of [1, 2, 4]" in message
    _launched(monkeypatch, 2)
    validate_config(compose(["distributed=ulysses"]))  # 2 of 4 heads each


def test_key_value_heads_must_divide_or_be_a_multiple_of_sp_size(monkeypatch):
    _launched(monkeypatch, 3)  # 6 heads split in 3 is fine, 4 key/value heads are not
    overrides = [
        "distributed=ulysses",
        "model.init_config.num_attention_heads=6",
        "model.init_config.hidden_size=96",
        "model.init_config.num_key_value_heads=4",
    ]
    assert "one of [1, 2]" in _refused(overrides, "6 attention heads and 4 key/value heads")


@pytest.mark.parametrize("attention", ["eager", "flex_attention"])
def test_ulysses_refuses_attention_it_cannot_split(attention, monkeypatch):
    _launched(monkeypatch, 2)
    message = _refused(
        ["distributed=ulysses", f"model.attn_implementation={attention}"], f"model.attn_implementation={attention}"
    )
    assert "Set model.attn_implementation=sdpa" in message


def test_ulysses_refuses_padded_batches(monkeypatch):
    _launched(monkeypatch, 2)
    _refused(["distributed=ulysses", "data.padding_free=false"], "data.padding_free=false: Ulysses drops the attention")
    validate_config(compose(["distributed=ulysses", "data.packing=true"]))  # packed rows: apart by position_ids


def test_ulysses_refuses_packed_rows_where_attention_cannot_keep_them_apart():
    from sft_exp.run.sequence_parallel import refuse_mixed_examples

    with pytest.raises(ConfigError, match="packed examples would attend to each other"):
        refuse_mixed_examples("ulysses", packing=True, attention="sdpa")  # a model left on plain sdpa
    refuse_mixed_examples("ulysses", packing=True, attention="sdpa_varlen")
    refuse_mixed_examples("ulysses", packing=False, attention="sdpa")  # one example per row: causal is enough


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case")
def test_ulysses_on_cpu_collates_in_the_training_process(monkeypatch):
    _launched(monkeypatch, 2)
    _refused(["distributed=ulysses", "trainer.dataloader_num_workers=2"], "set trainer.dataloader_num_workers=0")


def test_ulysses_refuses_a_router_balancing_loss(monkeypatch):
    _launched(monkeypatch, 2)
    _refused(["distributed=ulysses", "model=tiny_moe"], "mixture-of-experts model that trains its router")


def test_a_split_size_of_another_strategy_is_refused():
    _refused(
        ["distributed.sp_size=2"], r"distributed.sp_size=2 is for distributed=ulysses; this run is distributed=ddp"
    )
    _refused(["distributed=ulysses", "distributed.cp_size=2"], r"distributed.cp_size=2 is for distributed=ring")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case")
def test_ring_is_refused_on_cpu_with_the_engines_reason(monkeypatch):
    _launched(monkeypatch, 2)
    message = _refused(["distributed=ring"], "distributed=ring on CPU")
    assert "_scaled_dot_product_flash_attention_for_cpu.default does not have a sharding strategy" in message
    assert "distributed=ulysses" in message


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.packing=true"], "data.packing=true: torch's ring attention is causal over the whole row"),
        (["data.padding_free=true"], "data.padding_free=true"),
        (["model.attn_implementation=eager"], "replaces SDPA only"),
    ],
)
def test_ring_refuses_what_it_cannot_split(overrides, match, monkeypatch):
    _launched(monkeypatch, 2)
    _refused(["distributed=ring", *overrides], match)


@pytest.mark.parametrize("strategy", ["ulysses", "ring"])
def test_an_engine_that_is_missing_is_refused_naming_the_strategy(strategy, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )  # as on a machine without deepspeed
    if strategy == "ring":  # as on a torch without FSDP2
        from torch.distributed import fsdp

        monkeypatch.delattr(fsdp, "fully_shard")
    message = _refused([f"distributed={strategy}"], f"distributed={strategy} (needs the deepspeed|uses FSDP2)")
    assert "pip install" in message


def test_a_refusal_on_the_command_line_exits_2_before_anything_loads(tmp_path):
    import subprocess
    import sys

    env = {
        **TEST_ENV,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }  # no process group is ever joined
    proc = subprocess.run(
        [sys.executable, "-m", "sft_exp", "distributed=ulysses", "distributed.sp_size=3", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "distributed.sp_size=3 does not divide the 2 processes" in proc.stderr + proc.stdout
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("strategy", ["ulysses", "ring"])
def test_one_process_says_there_is_nothing_to_split_and_trains_plainly(strategy, tmp_path, caplog, monkeypatch):
    from sft_exp.train import run
    from tests.helpers import tiny_run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING", logger="sft_exp"):
        run(compose([*tiny_run(2, 16, 2), f"distributed={strategy}", f"run_dir={tmp_path}"]))
    assert f"distributed={strategy} in one process: there is no other rank to split each row across" in caplog.text
    assert (tmp_path / "model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- the split batch
def test_targets_are_shifted_before_the_split_so_a_shard_boundary_predicts_the_next_shard():
    from sft_exp.data.collator import SFTCollator
    from sft_exp.run.sequence_parallel import SplitBatches
    from sft_exp.training.forward import targets

    rows = prepared_rows([5, 6])
    for row in rows:
        row["loss_weights"] = [float(i % 3) for i in range(len(row["input_ids"]))]
    batch = SplitBatches(SFTCollator(0, padding_free=True, separate_rows=True, pad_to_multiple_of=4))(rows)
    assert batch["input_ids"].shape == (2, 8)  # the longest row, 6, padded to a multiple of the split
    half = {key: value[:, :4] for key, value in batch.items()}  # what the first of 2 ranks gets
    shifted = targets(half)
    # Position 3 (the last of the first shard) predicts token 4 (the first of the second shard), with its weight.
    assert shifted["shift_labels"][1, 3] == rows[1]["labels"][4] != -100
    assert shifted["shift_loss_weights"][1, 3] == rows[1]["loss_weights"][4]
    whole = targets({key: value for key, value in batch.items() if not key.startswith("shift_")})  # one process
    for key, value in whole.items():
        assert value.equal(batch[key]), key
    # The end padding (one example from position 0) and each row's last token predict nothing.
    assert (batch["shift_labels"][0, 4:] == -100).all() and (batch["shift_labels"][1, 5:] == -100).all()
    assert (batch["shift_source_ids"][0, 5:] == -1).all()


def test_a_batch_without_shifted_targets_is_shifted_as_before():
    from sft_exp.training.forward import supervised_mask, targets

    batch = {key: torch.tensor([values]) for key, values in prepared_rows([6])[0].items()}
    batch["position_ids"] = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two examples in one row
    mask = supervised_mask(targets(batch))
    expected = (batch["labels"][:, 1:] != -100) & (batch["position_ids"][:, 1:] != 0)
    assert mask[:, :-1].equal(expected) and not mask[:, -1].any()


def test_widths_follow_the_collator():
    from sft_exp.data.collator import SFTCollator

    rows = prepared_rows([5, 7])
    assert SFTCollator(0, padding_free=True, pad_to_multiple_of=4).width(rows) == 12
    assert SFTCollator(0, padding_free=True, separate_rows=True, pad_to_multiple_of=4).width(rows) == 8
    assert SFTCollator(0, pad_to_multiple_of=3).width(rows) == 9
    assert SFTCollator(0)(rows, width=10)["input_ids"].shape == (2, 10)


def test_unsplit_attention_puts_the_models_own_attention_back_meanwhile():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from sft_exp.run.sequence_parallel import unsplit_attention
    from tests.helpers import tiny_causal_lm

    model = tiny_causal_lm("llama")
    own = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def split(*args, **kwargs):  # what DeepSpeed registers in its place
        return own(*args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = split
    try:
        with unsplit_attention(model):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is own
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is split
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
    with unsplit_attention(model):  # nothing in its place: nothing to do
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is own
