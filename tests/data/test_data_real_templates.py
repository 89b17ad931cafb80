"""Assistant masks for real chat templates (no generation markers).

The templates and the real phi-3-mini tokenizer ship in tests/assets (see its README for sources
and licences), so these run from a fresh clone; the three whose licences keep them out of the repo
(Llama 3.1, Llama 3.2, Gemma 2) come from ../shared/data/chat_templates and skip without it.
Each template is rendered with the phi-3-mini tokenizer (its control tokens added as special
tokens), and the trained tokens of each assistant turn must be exactly the reply followed by that
template's end-of-turn token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sft_exp.data.encoding import EncodeSpec, encode_batch
from sft_exp.data.formats import Conversation
from sft_exp.data.masks import conversation_spans
from sft_exp.data.templates import CHATML, template_variables
from sft_exp.errors import BadRow
from tests.data.builders import conversation, trained_runs

CONTROL_TOKENS = [
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "[INST]", "[/INST]",
]  # fmt: skip
# template file -> (assistant turn 1, assistant turn 2) as trained, for the conversation below.
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("Paris.<|im_end|>", "Rome.<|im_end|>"),
    "qwen2.5_tokenizer_config.json": ("Paris.<|im_end|>", "Rome.<|im_end|>"),
    "qwen3_tokenizer_config.json": ("Paris.<|im_end|>", "<think>\n\n</think>\n\nRome.<|im_end|>"),
    "smollm3_chat_template.jinja": ("Paris.<|im_end|>", "Rome.<|im_end|>"),
    "chatml.axolotl.jinja": ("Paris.<|im_end|>", "Rome.<|im_end|>"),
    "google-gemma-2-2b-it.jinja": ("Paris.<end_of_turn>", "Rome.<end_of_turn>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("Paris.<|eot_id|>", "Rome.<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("Paris.<|eot_id|>", "Rome.<|eot_id|>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("Paris.<|end|>", "Rome.<|end|><|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("Paris.<|endoftext|>", "Rome.<|endoftext|>"),
    "zephyr.chujiezheng.jinja": ("Paris.<|endoftext|>", "Rome.<|endoftext|>"),
}
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_TEMPLATES = ASSETS / "chat_templates"
MESSAGES = conversation("Capital of France?", "Paris.", "And of Italy?", "Rome.")["messages"]


def _load_template(path) -> str:
    if path.suffix == ".json":
        return json.loads(path.read_text())["chat_template"]
    text = path.read_text()
    if "chujiezheng" in path.name:  # that repo's README: strip its indentation before use
        text = text.replace("    ", "").replace("\n", "")
    return text


def _template_file(name: str) -> Path:
    """The shipped copy, else ../shared/data's (skips when neither has it)."""
    from tests.data.builders import SHARED_DATA

    for folder in (SHIPPED_TEMPLATES, SHARED_DATA / "chat_templates"):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is not shipped in tests/assets (its licence) and ../shared/data is absent")


@pytest.fixture(scope="module")
def phi3_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ASSETS / "tokenizers" / "phi-3-mini"))
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS})
    return tokenizer


def _encode(tokenizer, template: str, messages: list[dict], drop: bool = False) -> dict:
    spec = EncodeSpec(
        tokenizer=tokenizer, fmt="messages", columns={"messages": "messages", "tools": "tools"}, template=template,
        template_variables=template_variables(tokenizer), markers=False, assistant_only=True, completion_only=True,
        max_length=None, source_index=0, source_file="chat.jsonl", drop_bad_rows=drop,
    )  # fmt: skip
    return encode_batch({"messages": [messages]}, [0], spec).to_pydict()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_assistant_turns_and_their_end_of_turn_are_trained(phi3_tokenizer, name):
    template = _load_template(_template_file(name))
    out = _encode(phi3_tokenizer, template, MESSAGES)
    assert out["drop_reason"] == [""]
    runs = trained_runs(phi3_tokenizer, out["input_ids"][0], out["labels"][0])
    assert runs == list(EXPECTED[name])


def test_every_shared_template_is_covered(shared_data):
    assert sorted(path.name for path in (shared_data / "chat_templates").iterdir()) == sorted(EXPECTED)


def test_the_shipped_templates_are_most_of_them_and_unchanged(shared_data):
    shipped = sorted(path.name for path in SHIPPED_TEMPLATES.iterdir())
    assert len(shipped) == 8 and set(shipped) <= set(EXPECTED)
    for name in shipped:  # byte-identical to the reference copies
        assert (SHIPPED_TEMPLATES / name).read_bytes() == (shared_data / "chat_templates" / name).read_bytes(), name


def test_template_that_moves_the_system_prompt_is_reported(phi3_tokenizer):
    # Mistral-Nemo puts the system prompt into the *last* user turn, so a prefix renders differently.
    template = _load_template(_template_file("mistralai-Mistral-Nemo-Instruct-2407.jinja"))
    messages = conversation("Capital of France?", "Paris.", "And of Italy?", "Rome.", system="Be brief")["messages"]
    out = _encode(phi3_tokenizer, template, messages, drop=True)
    assert out["drop_reason"] == ["template_mismatch"]


def test_prefix_masks_equal_generation_marker_masks(phi3_tokenizer):
    plain_chatml = re.sub(r"\{% (end)?generation %\}", "", CHATML)
    variables = template_variables(phi3_tokenizer)
    rows = [MESSAGES, conversation("Hi", "Hello there", system="You are helpful")["messages"]]
    for messages in rows:
        conv = Conversation(messages, None, None)
        with_markers = conversation_spans(
            conv, CHATML, variables, assistant_only=True, completion_only=False, markers=True
        )
        from_prefixes = conversation_spans(
            conv, plain_chatml, variables, assistant_only=True, completion_only=False, markers=False
        )
        assert with_markers == from_prefixes


def test_template_that_rewrites_the_reply_is_a_mismatch(phi3_tokenizer):
    shouting = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\\n' }}{% endfor %}"
    conv = Conversation(MESSAGES, None, None)
    with pytest.raises(BadRow, match="verbatim") as raised:
        conversation_spans(conv, shouting, {}, assistant_only=True, completion_only=False, markers=False)
    assert raised.value.reason == "template_mismatch"
