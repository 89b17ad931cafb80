"""Tool-calling conversations against the real templates in ../shared/data/chat_templates.

For each template that renders tool calls, the tokens sft_exp trains on must be the tokens of what
transformers' apply_chat_template renders for the same conversation with structured calls (the
inference format), and the assistant masks must cover each call and its end-of-turn token. Also
the shared OpenAI rows with Qwen2.5's template: no double-encoded arguments, every call in tags.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from sft_exp.data import prepare_datasets
from tests.data.builders import settings, trained_runs, write_jsonl

CONTROL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                  "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]  # fmt: skip
# Every shared template that renders `tool_calls` -> the token that ends an assistant turn.
END_OF_TURN = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "<|im_end|>",
    "qwen2.5_tokenizer_config.json": "<|im_end|>",
    "qwen3_tokenizer_config.json": "<|im_end|>",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "<|eot_id|>",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "<|eot_id|>",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "<|endoftext|>",  # the tokenizer's eos_token
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
CITIES = ("Paris", "Oslo")


def _structured(n_calls: int) -> list[dict]:
    """The conversation as apply_chat_template takes it: calls with dict arguments (ids: Mistral's 9 characters)."""
    calls = [{"id": f"call{i:05d}", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": city}}} for i, city in enumerate(CITIES[:n_calls])]  # fmt: skip
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": f"22 C in {city}"} for call, city in zip(calls, CITIES)
    ]
    return [{"role": "user", "content": "What is the weather like?"}, {"role": "assistant", "tool_calls": calls},
            *results, {"role": "assistant", "content": "It is warm."}]  # fmt: skip


def _openai_row(n_calls: int) -> dict:
    """The same conversation as OpenAI writes it: `arguments` a JSON string."""
    messages = copy.deepcopy(_structured(n_calls))
    for call in messages[1]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    return {"messages": messages, "tools": TOOLS}


def _sharegpt_row(n_calls: int) -> dict:
    """The same conversation in LLaMA-Factory's ShareGPT convention (no call ids there)."""
    calls = [{"name": "get_weather", "arguments": {"city": city}} for city in CITIES[:n_calls]]
    turns = [{"from": "human", "value": "What is the weather like?"},
             {"from": "function_call", "value": json.dumps(calls[0] if n_calls == 1 else calls)},
             *({"from": "observation", "value": f"22 C in {city}"} for city in CITIES[:n_calls]),
             {"from": "gpt", "value": "It is warm."}]  # fmt: skip
    return {"conversations": turns, "tools": json.dumps([tool["function"] for tool in TOOLS])}


def _without_ids(messages: list[dict]) -> list[dict]:
    messages = copy.deepcopy(messages)
    for message in messages:
        message.pop("tool_call_id", None)
        for call in message.get("tool_calls", []):
            call.pop("id")
    return messages


CASES = {  # name -> (row as a file has it, the structured conversation it must train as)
    f"{style}_{n}call": (row(n), _structured(n) if style == "openai" else _without_ids(_structured(n)))
    for style, row in (("openai", _openai_row), ("sharegpt", _sharegpt_row))
    for n in (1, 2)
}


def _load_template(path) -> str:
    return json.loads(path.read_text())["chat_template"] if path.suffix == ".json" else path.read_text()


@pytest.fixture(scope="module")
def phi3_tokenizer():
    from transformers import AutoTokenizer

    from tests.data.builders import TEST_ASSETS

    folder = TEST_ASSETS / "tokenizers" / "phi-3-mini"  # shipped (tests/assets/README.md)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS})
    return tokenizer


def template_file(name: str):
    """The shipped copy of a real template, else ../shared/data's; the Llama 3.x templates are not shipped
    (their licence), so their cases skip without ../shared."""
    from tests.data.builders import SHARED_DATA, TEST_ASSETS

    for folder in (TEST_ASSETS / "chat_templates", SHARED_DATA / "chat_templates"):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is not shipped in tests/assets (its licence) and ../shared/data is absent")


def _prepare(tokenizer, tmp_path, rows, template_path, **values):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = {"sources": [{"path": str(path)}], "chat_template": str(template_path), "assistant_only_loss": True, **values}
    if template_path.suffix == ".json":  # data.chat_template takes a .jinja file
        (tmp_path / "template.jinja").write_text(_load_template(template_path))
        cfg["chat_template"] = str(tmp_path / "template.jinja")
    return prepare_datasets(settings(**cfg), tokenizer)


def test_every_tool_template_is_covered(shared_data):
    renders_calls = [
        path.name for path in (shared_data / "chat_templates").iterdir() if "tool_calls" in path.read_text()
    ]
    assert sorted(renders_calls) == sorted(END_OF_TURN)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_trained_text_is_the_inference_render_and_masks_cover_each_call(phi3_tokenizer, tmp_path, name, case):
    template_path = template_file(name)
    row, structured = CASES[case]
    try:
        expected = phi3_tokenizer.apply_chat_template(
            structured, tools=TOOLS, chat_template=_load_template(template_path), tokenize=False
        )
    except Exception as err:  # Llama 3.x take one call per turn; Mistral needs call ids, which ShareGPT rows lack
        pytest.skip(f"{name} refuses this conversation at inference too: {err}")
    out = _prepare(phi3_tokenizer, tmp_path, [row], template_path).train[0]
    assert out["input_ids"] == phi3_tokenizer(expected, add_special_tokens=False)["input_ids"]
    end = END_OF_TURN[name]
    call_turn, reply_turn = trained_runs(phi3_tokenizer, out["input_ids"], out["labels"])
    for city in CITIES[: len(structured[1]["tool_calls"])]:
        assert "get_weather" in call_turn and json.dumps({"city": city}) in call_turn
    assert call_turn.endswith(end) and reply_turn.endswith("It is warm." + end)
    assert "22 C" not in call_turn + reply_turn  # tool results are input, not trained


def test_openai_tool_rows_with_qwen2_5_have_no_double_encoded_arguments(phi3_tokenizer, tmp_path):
    from tests.data.builders import TEST_ASSETS

    path = TEST_ASSETS / "conversations" / "foundry_stock_toolcall_training.messages.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    calls_in_file = sum(len(m.get("tool_calls", [])) for row in rows for m in row["messages"])
    assert calls_in_file == 36
    data = _prepare(phi3_tokenizer, tmp_path, rows, template_file("Qwen-Qwen2.5-7B-Instruct.jinja"))
    assert len(data.train) == len(rows)
    texts = [phi3_tokenizer.decode(row["input_ids"]) for row in data.train]
    trained = [run for row in data.train for run in trained_runs(phi3_tokenizer, row["input_ids"], row["labels"])]
    # (the system prompt shows the layout once: `{"name": <function-name>, ...}`, not JSON)
    calls = [
        json.loads(call)
        for text in texts
        for call in re.findall(r"<tool_call>\n(\{\"name\": \".*?)\n</tool_call>", text)
    ]
    assert len(calls) == calls_in_file
    assert all(isinstance(call["arguments"], dict) and call["arguments"] for call in calls)  # not a JSON string
    assert not any('\\"' in text for text in texts)  # no escaped quotes anywhere: nothing encoded twice
    trained_calls = [run for run in trained if re.fullmatch(r"<tool_call>\n\{.*\}\n</tool_call><\|im_end\|>", run)]
    assert len(trained_calls) == calls_in_file  # each call and its <|im_end|> trained, as a turn of its own
