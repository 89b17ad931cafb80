"""Stop tokens travel with the model: a saved model stops where its template ended the turns it was trained on.

Two checkpoints a user brings, each trained through the CLI and reloaded with from_pretrained:
  (a) Phi-3 style: the tokenizer's EOS is <|endoftext|>, the checkpoint's generation_config.json stops
      at <|end|> (the template's end of turn) and carries sampling defaults;
  (b) a base model (EOS <|endoftext|>, no template) trained with data.chat_template=chatml, whose turns
      end with <|im_end|>.
The rows are four short conversations, repeated: a tiny model learns them in a few dozen steps, so
greedy generation shows where the saved model stops.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from sft_exp.data.templates import CHATML
from sft_exp.models.stop_tokens import end_of_turn_token, stop_ids
from sft_exp.paths import asset_path
from tests.helpers import REPO, run_sft, tiny_causal_lm

PHI3_TOKENIZER = REPO / "tests" / "assets" / "tokenizers" / "phi-3-mini"
PAIRS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")]
SAMPLING = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)  # the checkpoint's own defaults


def write_rows(path, copies: int = 10):
    with path.open("w") as f:
        for _ in range(copies):
            for question, answer in PAIRS:
                f.write(
                    json.dumps(
                        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
                    )
                    + "\n"
                )
    return path


def train_cli(model_dir, rows, run_dir, *overrides):
    proc = run_sft(
        "model=hf", f"model.name_or_path={model_dir}", "model.dtype=float32", f"data.sources=[{{path:{rows}}}]",
        "data.eval_split_size=0.1", "data.max_length=32", "trainer.max_steps=60", "trainer.logging_steps=20",
        "trainer.save_steps=30", "trainer.per_device_train_batch_size=8", "optimizer.lr=3e-3",
        "evals.heldout.max_new_tokens=12", "logger=none", f"run_dir={run_dir}", *overrides, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def greedy(folder, question: str) -> list:
    """The new token ids of greedy generation with the folder's own generation config."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=12)
    return out[0, prompt["input_ids"].shape[1] :].tolist()


def last_heldout_row(run_dir) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in reversed(rows) if "eval_heldout/truncated" in row)


# ----------------------------------------------------------------------------- (a) Phi-3 style
@pytest.fixture(scope="module")
def phi3_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phi3") / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(PHI3_TOKENIZER)
    model = tiny_causal_lm("phi3", vocab_size=32064, bos_token_id=1, eos_token_id=32000, pad_token_id=32000)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=32007, pad_token_id=32000, **SAMPLING)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def phi3_run(phi3_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("phi3_run")
    run_dir = base / "run"
    train_cli(phi3_checkpoint, write_rows(base / "rows.jsonl"), run_dir)
    return run_dir


def test_phi3_keeps_its_own_stop_and_sampling_defaults(phi3_run):
    end = AutoTokenizer.from_pretrained(PHI3_TOKENIZER).convert_tokens_to_ids("<|end|>")
    for folder in (phi3_run / "model", phi3_run / "checkpoints" / "checkpoint-30"):
        saved = json.loads((folder / "generation_config.json").read_text())
        assert saved["eos_token_id"][0] == end, saved  # the checkpoint's own stop first, not <|endoftext|>
        assert set(saved["eos_token_id"]) == {end, 32000}  # + the tokenizer's EOS, which the template appends
        assert {k: saved.get(k) for k in SAMPLING} == SAMPLING and saved["pad_token_id"] == 32000


def test_phi3_saved_model_stops_at_end_of_turn(phi3_run):
    end = AutoTokenizer.from_pretrained(PHI3_TOKENIZER).convert_tokens_to_ids("<|end|>")
    tokenizer = AutoTokenizer.from_pretrained(phi3_run / "model")
    for question, answer in PAIRS:
        new = greedy(phi3_run / "model", question)
        assert new[-1] == end and 32000 not in new, (question, tokenizer.decode(new))
        assert tokenizer.decode(new, skip_special_tokens=True).strip() == answer
    assert last_heldout_row(phi3_run)["eval_heldout/truncated"] == 0
    assert last_heldout_row(phi3_run)["eval_heldout/exact_match"] == 1.0


# ----------------------------------------------------------------------------- (b) base model + chatml
@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A base model: EOS <|endoftext|>, no chat template, but <|im_start|>/<|im_end|> in its vocabulary."""
    folder = tmp_path_factory.mktemp("base") / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    tokenizer.eos_token, tokenizer.chat_template = "<|endoftext|>", None
    eos = tokenizer.eos_token_id
    model = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=eos)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chatml_run(base_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("chatml_run")
    run_dir = base / "run"
    train_cli(
        base_checkpoint,
        write_rows(base / "rows.jsonl"),
        run_dir,
        "data.chat_template=chatml",
        "data.assistant_only_loss=true",
    )
    return run_dir


def test_a_base_model_trained_with_chatml_stops_at_im_end(chatml_run):
    tokenizer = AutoTokenizer.from_pretrained(chatml_run / "model")
    im_end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    saved = json.loads((chatml_run / "model" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [eos, im_end]  # its own stop, then the trained end of turn
    for question, answer in PAIRS:
        new = greedy(chatml_run / "model", question)
        assert new[-1] == im_end, (question, tokenizer.decode(new))
        assert tokenizer.decode(new, skip_special_tokens=True) == answer
    assert last_heldout_row(chatml_run)["eval_heldout/truncated"] == 0
    trained = json.loads((chatml_run / "run_info.json").read_text())["data_stats"]["end_of_turn"]
    assert trained["token"] == "<|im_end|>" and trained["trained"] > 0 and 0 < trained["share"] < 1


# ----------------------------------------------------------------------------- finding the end of turn
def test_end_of_turn_of_real_templates():
    phi3 = AutoTokenizer.from_pretrained(PHI3_TOKENIZER)
    demo = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    assert end_of_turn_token(phi3.chat_template, phi3) == ("<|end|>", 32007)
    phi35 = (REPO / "tests" / "assets" / "chat_templates" / "microsoft-Phi-3.5-mini-instruct.jinja").read_text()
    assert end_of_turn_token(phi35, phi3) == ("<|end|>", 32007)
    qwen3 = json.loads((REPO / "tests" / "assets" / "chat_templates" / "qwen3_tokenizer_config.json").read_text())
    assert end_of_turn_token(qwen3["chat_template"], demo) == ("<|im_end|>", 2)
    assert end_of_turn_token(CHATML, demo) == ("<|im_end|>", 2)
    # Phi-3's vocabulary has no <|im_end|> token: chatml text there ends a turn with plain characters.
    assert end_of_turn_token(CHATML, phi3) is None
    assert stop_ids([32007], phi3, phi3.chat_template) == [32007, 32000]


def test_a_template_with_no_end_of_turn_warns_at_data_preparation_naming_it(caplog, tmp_path):
    from sft_exp.data import DataSettings, prepare_datasets

    demo = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    rows = write_rows(tmp_path / "rows.jsonl", copies=2)
    with caplog.at_level(logging.WARNING, logger="sft_exp.models.stop_tokens"):
        prepare_datasets(DataSettings(sources=[{"path": str(rows)}], chat_template=str(path), seed=0), demo)
        prepare_datasets(DataSettings(sources=[{"path": str(rows)}], chat_template="chatml", seed=0), demo)
    assert len(caplog.records) == 1, caplog.text  # chatml ends its turns with <|im_end|>: no warning
    assert f"data.chat_template={path}" in caplog.text and "not taught where to stop" in caplog.text


# ----------------------------------------------------------------------------- (b) as a LoRA run, merged
@pytest.fixture(scope="module")
def chatml_lora_run(base_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("chatml_lora")
    run_dir = base / "run"
    train_cli(
        base_checkpoint,
        write_rows(base / "rows.jsonl"),
        run_dir,
        "data.chat_template=chatml",
        "data.assistant_only_loss=true",
        "peft=lora",
        "peft.r=16",
        "optimizer.lr=2e-2",
    )
    return run_dir


@pytest.mark.slow  # kept out of the CI suite's 10 minutes: python -m pytest -m slow
def test_the_merged_model_of_a_chatml_lora_run_stops_at_im_end_and_passes_the_serving_check(chatml_lora_run, capsys):
    from sft_exp.tools.export import main

    adapter = json.loads((chatml_lora_run / "model" / "generation_config.json").read_text())
    assert main([str(chatml_lora_run), "--merge"]) == 0  # the serving check passed
    merged = chatml_lora_run / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    im_end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [eos, im_end]
    assert adapter["eos_token_id"] == [eos, im_end]  # written beside the adapter too, and its checkpoints
    checkpoint = json.loads((chatml_lora_run / "checkpoints" / "checkpoint-30" / "generation_config.json").read_text())
    assert checkpoint["eos_token_id"] == [eos, im_end]
    for question, answer in PAIRS:
        new = greedy(merged, question)
        assert new[-1] == im_end and tokenizer.decode(new, skip_special_tokens=True) == answer
    table = capsys.readouterr().out
    assert "<|im_end|> stops generation" in table and "eval_heldout/exact_match" in table and "FAIL" not in table


# ----------------------------------------------------------------------------- the embedded default, trained out
@pytest.mark.slow
def test_the_default_run_ends_every_heldout_answer_at_the_end_of_turn(tmp_path):
    """`python -m sft_exp` (1500 steps of the tiny model on the demo): no held-out answer runs to max_new_tokens."""
    run_dir = tmp_path / "run"
    proc = run_sft("logger=none", f"run_dir={run_dir}", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_heldout/truncated_before"] > 0 and summary["eval_heldout/truncated"] == 0, summary
    assert json.loads((run_dir / "model" / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>
