"""`python -m sft_exp model=hf model.name_or_path=<SmolLM2 folder> peft=lora` on real ShareGPT conversations:
20 steps lower the eval loss, the saved tokenizer carries the chat template trained with, and
`python -m sft_exp.export <run> --merge` writes a model that from_pretrained loads and that gives
base+adapter's logits. One run serves all three: a 135M model costs ~2 s a step on 2 CPU cores."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft_exp.data.templates import CHATML
from sft_exp.models.stop_tokens import as_ids
from tests.helpers import TEST_ASSETS, run_sft

pytestmark = pytest.mark.real_model

SHAREGPT = TEST_ASSETS / "conversations" / "fastchat_dummy_conversation.sharegpt.json"


@pytest.fixture(scope="module")
def lora_run(smollm2_folder, tmp_path_factory):
    """20 LoRA steps of 2 rows (<= 64 tokens) on FastChat's ShareGPT file, trained with ChatML (not SmolLM2's
    own template, so a saved template that is not the trained one shows)."""
    run = tmp_path_factory.mktemp("smollm2") / "run"
    proc = run_sft(
        "model=hf", f"model.name_or_path={smollm2_folder}", "peft=lora",
        f"data.sources=[{{path:{SHAREGPT},max_samples:100}}]", "data.eval_split_size=8", "data.max_length=64",
        "data.chat_template=chatml", "trainer.max_steps=20", "trainer.per_device_train_batch_size=2",
        "trainer.per_device_eval_batch_size=8", "trainer.logging_steps=5", "trainer.save_steps=1000",
        "optimizer.lr=1e-3", "evals=none", "logger=none", f"hydra.run.dir={run}", timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_twenty_steps_lower_the_eval_loss_and_save_the_trained_template(lora_run, smollm2_folder):
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["global_step"] == 20
    assert summary["eval_loss"] < summary["eval_loss_before"] - 0.1, summary
    saved = AutoTokenizer.from_pretrained(str(lora_run / "model"))
    assert saved.chat_template == CHATML != AutoTokenizer.from_pretrained(str(smollm2_folder)).chat_template


def test_export_merge_loads_and_matches_base_plus_adapter(lora_run, smollm2_folder):
    from peft import PeftModel

    proc = run_sft(str(lora_run), "--merge", module="sft_exp.export", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(str(lora_run / "merged"), dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(str(lora_run / "merged"))
    assert tokenizer.chat_template == CHATML  # the template the run trained with, not SmolLM2's own

    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(smollm2_folder), dtype=torch.float32), str(lora_run / "model")
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is your name?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = adapted(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        with adapted.disable_adapter():
            plain = adapted(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-2  # the adapter trained: merging it changes the logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # The serving check passed, and the merged model stops at the end of turn it was trained with.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_end|> stops generation" in proc.stdout and "FAIL" not in proc.stdout
    saved_stops = json.loads((lora_run / "merged" / "generation_config.json").read_text())["eos_token_id"]
    assert im_end in as_ids(saved_stops)  # one id is saved as an int, several as a list
    with torch.no_grad():
        out = merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=96)
    new = out[0, ids.shape[1] :].tolist()
    assert new[-1] == im_end and len(new) < 96, tokenizer.decode(new)
