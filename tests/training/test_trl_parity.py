"""sft_exp's loss, mean_token_accuracy, entropy and gradients equal TRL SFTTrainer's on the same model and batch."""

import copy

import pytest
import torch
from transformers import PreTrainedTokenizerFast

trl = pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from sft_exp.training.forward import sft_forward  # noqa: E402
from sft_exp.training.losses import DFTLoss, NLLLoss  # noqa: E402
from tests.helpers import tiny_causal_lm  # noqa: E402

VOCAB = 64


def word_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def prompt_completion_rows(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        prompt = torch.randint(2, VOCAB, (3 + i,), generator=g).tolist()
        completion = torch.randint(2, VOCAB, (4 + 2 * i,), generator=g).tolist() + [1]
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("loss_type,loss_cls", [("nll", NLLLoss), ("dft", DFTLoss)])
def test_loss_accuracy_entropy_match_trl(tmp_path, loss_type, loss_cls):
    model = tiny_causal_lm(vocab_size=VOCAB, hidden_size=32)
    ours = copy.deepcopy(model)  # TRL patches the forward of the model it is given
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        loss_type=loss_type,
        per_device_train_batch_size=6,
        report_to=[],
        use_cpu=True,
        completion_only_loss=True,
        max_length=None,
    )
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=prompt_completion_rows(), processing_class=word_tokenizer()
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()  # masks and pads exercised

    trl_loss = trainer.compute_loss(trainer.model, dict(batch))
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    out = sft_forward(ours, dict(batch), loss_cls(chunk_size=5))

    def close(a, b):
        assert a == pytest.approx(b, rel=1e-4), (a, b)

    assert 0 < trl_metrics["mean_token_accuracy"] < 1  # a metric that could differ
    close(out.loss.item(), trl_loss.item())
    close((out.num_correct / out.num_supervised).item(), trl_metrics["mean_token_accuracy"])
    close((out.entropy_sum / out.num_supervised).item(), trl_metrics["entropy"])

    # The same gradients, parameter by parameter, after one backward of each loss.
    trl_loss.backward()
    out.loss.backward()
    trl_grads = dict(trainer.model.named_parameters())
    compared = 0
    for name, param in ours.named_parameters():
        assert param.grad is not None and trl_grads[name].grad is not None, name
        torch.testing.assert_close(param.grad, trl_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
        compared += 1
    assert compared == len(trl_grads) and any(p.grad.abs().sum() > 0 for p in ours.parameters())
