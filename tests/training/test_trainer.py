"""SFTTrainer behaviour a user relies on beyond the loss itself: non-finite losses, the config's optimizer,
gradient accumulation through the Trainer's own scaling, and metrics that are token-weighted over the logging window."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from datasets import Dataset

from sft_exp.data import SFTCollator
from sft_exp.training.trainer import NonFiniteLossError, SFTTrainer
from tests.helpers import tiny_causal_lm


def tiny_model():
    return tiny_causal_lm(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )


def rows(n=16, length=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (n, length), generator=g).tolist()
    return Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": [[-100] * 4 + r[4:] for r in ids],
            "position_ids": [list(range(length))] * n,
            "source_ids": [[0] * length] * n,
        }
    )


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
        model=model,
        train_dataset=rows(),
        data_collator=SFTCollator(pad_token_id=0),
        output_dir=str(tmp_path),
        optimizer_factory=functools.partial(torch.optim.AdamW, lr=1e-3),
        **{**settings, **kwargs},
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
    trainer = SFTTrainer(
        model=model,
        train_dataset=rows(),
        data_collator=SFTCollator(pad_token_id=0),
        output_dir=str(tmp_path),
        max_steps=1,
        save_strategy="no",
        optimizer_factory=functools.partial(torch.optim.SGD, lr=0.5, weight_decay=0.1),
    )
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    norm_ids = {id(p) for n, p in model.named_parameters() if "norm" in n or n.endswith("bias")}
    assert norm_ids and norm_ids <= {id(p) for p in not_decayed["params"]}


def uneven_rows(n: int, length: int = 12) -> Dataset:
    """Rows whose supervised token counts differ a lot (1 to length-1), so per-batch means are not token-weighted."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (n, length), generator=g).tolist()
    supervised = [1 + (7 * i) % (length - 1) for i in range(n)]
    return Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": [[-100] * (length - k) + r[length - k :] for r, k in zip(ids, supervised)],
            "position_ids": [list(range(length))] * n,
            "source_ids": [[0] * length] * n,
        }
    )


def reference_sums(model, batch) -> dict:
    """Full-logits sums of one micro-batch, by hand: supervised tokens, NLL, correct top-1, entropy."""
    with torch.no_grad():
        logits = (
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                position_ids=batch["position_ids"],
            )
            .logits[:, :-1]
            .float()
        )
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits, -1)[mask]
    return dict(
        n=int(mask.sum()),
        nll=-logp.gather(1, targets[mask][:, None]).sum().item(),
        correct=int((logp.argmax(-1) == targets[mask]).sum()),
        entropy=-(logp.exp() * logp).sum().item(),
    )


class RecordingTrainer(SFTTrainer):
    """Records the reference sums of every training micro-batch, with the weights it is trained at."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.recorded.append((self.state.global_step, reference_sums(model, inputs)))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_logged_metrics_are_token_weighted_over_the_logging_window(tmp_path):
    steps = 3
    trainer = RecordingTrainer(
        model=tiny_model(),
        train_dataset=uneven_rows(24),
        data_collator=SFTCollator(pad_token_id=0),
        output_dir=str(tmp_path),
        optimizer_factory=functools.partial(torch.optim.AdamW, lr=3e-2),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        logging_steps=steps,
        logging_first_step=False,
        save_strategy="no",
    )
    trainer.recorded = []
    trainer.train()
    logged = [row for row in trainer.state.log_history if "mean_token_accuracy" in row]
    assert len(logged) == 1 and logged[0]["step"] == steps  # one window of 3 steps x 2 micro-batches
    row = logged[0]

    per_step = [
        {k: sum(sums[k] for s, sums in trainer.recorded if s == step) for k in ("n", "nll", "correct", "entropy")}
        for step in range(steps)
    ]
    total = {k: sum(step[k] for step in per_step) for k in per_step[0]}
    assert len({step["n"] for step in per_step}) > 1  # the steps supervise different numbers of tokens
    assert row["num_supervised_tokens"] == total["n"]
    assert row["mean_token_accuracy"] == pytest.approx(total["correct"] / total["n"], rel=1e-6)
    assert row["nll"] == pytest.approx(total["nll"] / total["n"], rel=1e-5)
    assert row["entropy"] == pytest.approx(total["entropy"] / total["n"], rel=1e-5)
    # `loss` is the Trainer's: the mean over the window's optimizer steps of each step's token-weighted loss.
    assert row["loss"] == pytest.approx(sum(s["nll"] / s["n"] for s in per_step) / steps, rel=1e-5)
    # The control: the model learns within the window, so a mean of per-step means would be another number.
    mean_of_means = sum(s["nll"] / s["n"] for s in per_step) / steps
    assert abs(mean_of_means - row["nll"]) > 1e-3, (mean_of_means, row["nll"])


def test_gradient_accumulation_4x2_gives_the_weights_of_1x8(tmp_path):
    """Through the Trainer's own accumulation and scaling (num_items_in_batch), not a hand-made token count."""

    def one_step(accumulation: int, batch: int) -> dict:
        model = tiny_model()
        trainer = SFTTrainer(
            model=model,
            train_dataset=uneven_rows(8),
            data_collator=SFTCollator(pad_token_id=0),
            output_dir=str(tmp_path / f"{accumulation}x{batch}"),
            save_strategy="no",
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,
            optimizer_factory=functools.partial(torch.optim.SGD, lr=1.0),  # plain SGD: a wrong scale shows
        )
        trainer.train()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    initial = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    accumulated, whole = one_step(4, 2), one_step(1, 8)
    assert any(not torch.equal(whole[k], initial[k]) for k in whole)  # the step moved the weights
    for key in whole:
        torch.testing.assert_close(accumulated[key], whole[key], rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def two_source_moe_runs(tmp_path_factory):
    """The tiny MoE preset on a two-source mixture, 2 steps, with the config's router coefficient and with 1.0."""
    import json

    from sft_exp.paths import asset_path
    from sft_exp.train import run
    from tests.helpers import NO_SAMPLE_GENERATIONS, compose

    folder = tmp_path_factory.mktemp("moe")
    lines = asset_path("demo/train.jsonl").read_text().splitlines()
    (folder / "alpha.jsonl").write_text("\n".join(lines[:40]) + "\n")
    (folder / "beta.jsonl").write_text("\n".join(lines[40:80]) + "\n")
    sources = f"data.sources=[{{path:{folder / 'alpha.jsonl'},name:alpha}},{{path:{folder / 'beta.jsonl'},name:beta}}]"
    runs = {}
    for name, coef in (("config", []), ("one", ["trainer.router_aux_loss_coef=1.0"])):
        run_dir = folder / name
        run(
            compose(
                [
                    "model=tiny_moe",
                    sources,
                    "data.eval_split_size=0",
                    "data.max_length=64",
                    "trainer.max_steps=2",
                    "trainer.logging_steps=1",
                    "trainer.save_steps=100",
                    "trainer.per_device_train_batch_size=4",
                    "logger=none",
                    *NO_SAMPLE_GENERATIONS,
                    *coef,
                    f"run_dir={run_dir}",
                ]
            )
        )
        runs[name] = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
        ]
    return runs


def test_per_source_loss_and_aux_loss_reach_metrics_jsonl(two_source_moe_runs):
    for row in two_source_moe_runs["config"]:
        assert row["aux_loss"] > 0, row
        alpha, beta = row["loss/alpha"], row["loss/beta"]
        assert min(alpha, beta) <= row["nll"] <= max(alpha, beta)  # the token-weighted mix of the two


def test_router_aux_loss_coef_changes_the_logged_loss_by_coef_times_aux_loss(two_source_moe_runs):
    config_coef = 0.001  # conf/model/tiny_moe.yaml: the Qwen2-MoE config's default
    first = {name: rows[0] for name, rows in two_source_moe_runs.items()}  # step 1: same weights and batch
    assert first["config"]["aux_loss"] == pytest.approx(first["one"]["aux_loss"], rel=1e-6)
    assert first["config"]["nll"] == pytest.approx(first["one"]["nll"], rel=1e-6)
    for name, coef in (("config", config_coef), ("one", 1.0)):
        row = first[name]
        assert row["loss"] - row["nll"] == pytest.approx(coef * row["aux_loss"], rel=1e-3, abs=1e-6), (name, row)
    assert first["one"]["loss"] - first["config"]["loss"] > 0.5 * first["one"]["aux_loss"]


def test_precision_bf16_computes_the_loss_transformers_autocast_computes(tmp_path):
    """accelerate autocasts model.forward only; the chunked head runs after it and must be under autocast too
    (bf16 matmuls, 2.3x fp32 on CPUs with AVX512-BF16), giving transformers' own autocast loss."""
    model = tiny_causal_lm(vocab_size=1000)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits large enough for bf16 rounding to show in the loss
    data = rows(n=8, length=40).map(
        lambda r: {
            "input_ids": [t * 15 for t in r["input_ids"]],
            "labels": [t * 15 if t >= 0 else t for t in r["labels"]],
        }
    )
    batch = SFTCollator(pad_token_id=0)(list(data))

    def reference(autocast: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss.item()

    bf16, fp32 = reference(autocast=True), reference(autocast=False)  # before accelerate wraps model.forward
    assert abs(fp32 - bf16) > 1e-4  # an fp32 head would be told apart (by 6x the tolerance below at least)
    trainer = make_trainer(
        model, tmp_path, eval_dataset=data, per_device_eval_batch_size=8, precision="bf16", use_cpu=True
    )
    # rel 1e-6: fp32 sums of one bf16 computation in another order (the trainer's thread count may differ)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(bf16, rel=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_a_tied_heads_missing_key_on_resume_is_not_warned_an_untied_ones_is(tmp_path, tied):
    """A checkpoint of a tied model has no lm_head.weight (it is the embedding): resuming must not say keys are
    missing; the same key missing for an untied head is a real loss and is still warned."""
    from torch.nn.modules.module import _IncompatibleKeys

    trainer = make_trainer(tiny_causal_lm(tie_word_embeddings=tied), tmp_path)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.trainer")  # transformers' loggers do not propagate to caplog's
    logger.addHandler(handler)
    try:
        trainer._issue_warnings_after_load(_IncompatibleKeys(missing_keys=["lm_head.weight"], unexpected_keys=[]))
    finally:
        logger.removeHandler(handler)
    assert any("There were missing keys" in m for m in seen) is not tied
