"""The private transformers.Trainer internals sft_exp relies on, checked against the installed version.

Each has no public equivalent (see sft_exp/compat.py and sft_exp/checkpoints.py); when an upgrade
changes one, this file fails by name instead of a checkpoint silently losing atomicity or the loss
silently changing scale.
"""

from __future__ import annotations

import inspect

from transformers import Trainer, TrainerState


def test_save_checkpoint_writes_under_get_output_dir():
    # AtomicCheckpoints redirects _get_output_dir while Trainer._save_checkpoint runs, so the checkpoint is
    # written into a staging folder and renamed when complete.
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
    assert "self._get_output_dir(trial=trial)" in inspect.getsource(Trainer._save_checkpoint)


def test_num_items_in_batch_counts_shifted_labels_when_told():
    # compat.set_loss_shifts_labels: the Trainer counts supervised tokens over labels[..., 1:] only when
    # `_loss_shifts_labels` is true; sft_exp's loss always shifts.
    source = inspect.getsource(Trainer)
    assert "self._loss_shifts_labels" in source and 'batch["labels"][..., 1:]' in source


def test_trainer_state_keeps_extra_stateful_callback_entries(tmp_path):
    # The unlogged metrics window rides in trainer_state.json's stateful_callbacks (SFTTrainer's on_step_end).
    state = TrainerState(stateful_callbacks=[])
    state.stateful_callbacks["sft_exp_train_window"] = {"steps": 3, "sums": [1.0, 2.0]}
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    loaded = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))
    assert loaded.stateful_callbacks["sft_exp_train_window"] == {"steps": 3, "sums": [1.0, 2.0]}
