"""SFTTrainer behaviour a user relies on beyond the loss itself: non-finite losses, the config's optimizer."""
from __future__ import annotations

import functools

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM

from sft_exp.data import SFTCollator
from sft_exp.trainer import NonFiniteLossError, SFTTrainer


def tiny_model():
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config)


def rows(n=16, length=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (n, length), generator=g).tolist()
    return Dataset.from_dict({
        "input_ids": ids,
        "labels": [[-100] * 4 + r[4:] for r in ids],
        "position_ids": [list(range(length))] * n,
        "source_ids": [[0] * length] * n,
    })


def poison_step(model, bad_step: int):
    """Make the forward pass of optimizer step `bad_step` (1-based, batch 4, no accumulation) return NaN."""
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        if model.training:
            calls["n"] += 1
            if calls["n"] == bad_step:
                return output * float("nan")
        return output

    model.model.norm.register_forward_hook(hook)


def make_trainer(model, tmp_path, **kwargs):
    settings = dict(max_steps=4, per_device_train_batch_size=4, logging_steps=1, save_strategy="no")
    return SFTTrainer(
        model=model, train_dataset=rows(), data_collator=SFTCollator(pad_token_id=0), output_dir=str(tmp_path),
        optimizer_factory=functools.partial(torch.optim.AdamW, lr=1e-3), **{**settings, **kwargs},
    )


def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path):
    model = tiny_model()
    poison_step(model, bad_step=2)
    trainer = make_trainer(model, tmp_path)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer.train()


def test_nonfinite_loss_skip_leaves_the_weights_of_that_step_unchanged(tmp_path):
    model = tiny_model()
    poison_step(model, bad_step=2)
    trainer = make_trainer(model, tmp_path, nonfinite_loss="skip", max_steps=2)
    snapshots = []

    from transformers import TrainerCallback

    class AfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    trainer.add_callback(AfterStep())
    trainer.train()
    assert len(snapshots) == 2
    for key, value in snapshots[1].items():
        assert torch.isfinite(value).all(), key
        assert torch.equal(value, snapshots[0][key]), f"{key} changed in the skipped step"
    assert trainer.state.log_history[1].get("skipped_steps") == 1


def test_the_optimizer_comes_from_the_factory_without_decay_on_norms_and_biases(tmp_path):
    model = tiny_model()
    trainer = SFTTrainer(model=model, train_dataset=rows(), data_collator=SFTCollator(pad_token_id=0),
                         output_dir=str(tmp_path), max_steps=1, save_strategy="no",
                         optimizer_factory=functools.partial(torch.optim.SGD, lr=0.5, weight_decay=0.1))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    norm_ids = {id(p) for n, p in model.named_parameters() if "norm" in n or n.endswith("bias")}
    assert norm_ids and norm_ids <= {id(p) for p in not_decayed["params"]}
