"""Tool-calling rows normalized to what chat templates are written for (no ../shared needed).

OpenAI rows carry `arguments` as a JSON string; ShareGPT rows (LLaMA-Factory's convention) write calls
as the JSON text of `function_call` turns. Both must train exactly the text the template renders for
structured calls (`arguments` a dict), which is what it renders at inference.
"""

from __future__ import annotations

import json

import pytest

from sft_exp.data import prepare_datasets
from sft_exp.data.formats import column_map, field_values, normalize_row
from sft_exp.errors import BadRow, ConfigError, DataError
from tests.data.builders import settings, write_jsonl

# Qwen2.5's tool-call layout, cut down (no generation markers: masks come from prefix renders).
TOOL_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- for tool in tools %}{{- tool | tojson + '\\n' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' + tool_call.arguments | tojson + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOOL = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOLS = [{"type": "function", "function": TOOL}]


def _call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


# The conversation as templates expect it: structured calls, `arguments` a dict.
STRUCTURED = [
    {"role": "user", "content": "weather Paris"},
    {"role": "assistant", "tool_calls": [_call("Paris")]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It s sunny"},
]
OPENAI_ROW = {
    "messages": [
        STRUCTURED[0],
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        *STRUCTURED[2:],
    ],
    "tools": TOOLS,
}  # fmt: skip
SHAREGPT_ROW = {
    "conversations": [
        {"from": "human", "value": "weather Paris"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "It s sunny"},
    ],
    "tools": json.dumps([TOOL]),  # LLaMA-Factory: bare schemas, as a JSON string
}


def _tokens(tokenizer, ids) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def _prepare(tokenizer, tmp_path, rows, source=None, **values):
    path = write_jsonl(tmp_path / "tools.jsonl", rows)
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    cfg = {"sources": [{"path": str(path), **(source or {})}], "chat_template": str(template),
           "assistant_only_loss": True, **values}  # fmt: skip
    return prepare_datasets(settings(**cfg), tokenizer)


def _trained(tokenizer, row) -> str:
    return _tokens(tokenizer, [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])


def test_openai_string_arguments_and_sharegpt_calls_become_structured():
    assert normalize_row("messages", OPENAI_ROW).messages == STRUCTURED
    conversation = normalize_row("sharegpt", SHAREGPT_ROW)
    assert conversation.messages == STRUCTURED
    assert conversation.tools == TOOLS  # parsed from JSON, bare schemas wrapped as {type, function}


@pytest.mark.parametrize("row", [OPENAI_ROW, SHAREGPT_ROW], ids=["openai", "sharegpt"])
def test_trained_text_is_the_template_render_of_structured_calls(word_tokenizer, tmp_path, row):
    row_out = _prepare(word_tokenizer, tmp_path, [row]).train[0]
    expected = word_tokenizer.apply_chat_template(STRUCTURED, tools=TOOLS, chat_template=TOOL_TEMPLATE, tokenize=False)
    assert row_out["input_ids"] == word_tokenizer(expected, add_special_tokens=False)["input_ids"]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert _trained(word_tokenizer, row_out) == call + "It s sunny<|im_end|>"  # the tool result is not trained


def test_an_empty_tools_list_is_no_tools():
    # LLaMA-Factory writes "[]"; Llama 3.1's template renders a tools section for [] but not for none.
    assert normalize_row("sharegpt", {**SHAREGPT_ROW, "tools": "[]"}).tools is None


def test_a_turn_with_several_calls_keeps_each_one():
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    ]
    turns = [{"from": "human", "value": "weather"}, {"from": "function_call", "value": json.dumps(calls)}]
    message = normalize_row("sharegpt", {"conversations": turns}).messages[1]
    assert message == {"role": "assistant", "tool_calls": [_call("Paris"), _call("Oslo")]}


@pytest.mark.parametrize("speaker", ["tool_call", "function_call", "tool_calls"])
@pytest.mark.parametrize("fmt", ["messages", "sharegpt"])
def test_tool_call_speaker_names(fmt, speaker):
    value = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    turns = [("user", "weather Paris"), (speaker, value), ("tool", "sunny"), ("assistant", "It s sunny")]
    key, text, field = ("role", "content", "messages") if fmt == "messages" else ("from", "value", "conversations")
    assert normalize_row(fmt, {field: [{key: k, text: v} for k, v in turns]}).messages == STRUCTURED


@pytest.mark.parametrize("speaker", ["tool", "observation", "function", "ipython", "function_response", "tool_results"])
def test_tool_result_speaker_names(speaker):
    messages = [STRUCTURED[0], OPENAI_ROW["messages"][1], {"role": speaker, "content": "sunny"}, STRUCTURED[3]]
    assert normalize_row("messages", {"messages": messages}).messages == STRUCTURED


def test_legacy_function_call_and_tool_calls_as_a_json_string():
    legacy = {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    as_string = {"role": "assistant", "tool_calls": json.dumps([_call("Paris")])}
    for message in (legacy, as_string):
        assert normalize_row("messages", {"messages": [STRUCTURED[0], message]}).messages[1] == STRUCTURED[1]


def test_own_speaker_names_and_turn_keys_through_columns(word_tokenizer, tmp_path):
    turns = [{"speaker": "USER", "text": "weather Paris"}, {"speaker": "CALL", "text": json.dumps(_call("Paris"))},
             {"speaker": "RESULT", "text": "sunny"}, {"speaker": "BOT", "text": "It s sunny"}]  # fmt: skip
    columns = {"conversations": "turns", "role_tag": "speaker", "content_tag": "text", "user_tag": "USER",
               "function_tag": "CALL", "observation_tag": "RESULT", "assistant_tag": "BOT"}  # fmt: skip
    assert (
        normalize_row("sharegpt", field_values({"turns": turns}, column_map("sharegpt", columns))).messages
        == STRUCTURED
    )
    data = _prepare(word_tokenizer, tmp_path, [{"turns": turns}], source={"format": "sharegpt", "columns": columns})
    assert "<tool_call>" in _trained(word_tokenizer, data.train[0])
    # A speaker the tags do not name is still an error that says which key names it.
    with pytest.raises(BadRow, match="conversations.0. has the unknown role 'USER'.*user_tag") as raised:
        normalize_row("sharegpt", field_values({"turns": turns}, column_map("sharegpt", {"conversations": "turns",
                      "role_tag": "speaker", "content_tag": "text"})))  # fmt: skip
    assert raised.value.reason == "unknown_role"


def test_messages_format_with_own_role_names(tmp_path):
    messages = [{"role": "human", "content": "weather Paris"}, {"role": "agent", "tool_calls": [_call("Paris")]},
                {"role": "result", "content": "sunny"}, {"role": "agent", "content": "It s sunny"}]  # fmt: skip
    mapping = column_map("messages", {"assistant_tag": "agent", "observation_tag": "result"})
    assert normalize_row("messages", field_values({"messages": messages}, mapping)).messages == STRUCTURED


def test_turn_tags_are_checked_like_columns(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Hi", "output": "Bye"}])
    with pytest.raises(ConfigError, match="columns.role_tag"):
        settings(sources=[{"path": str(path), "format": "alpaca", "columns": {"role_tag": "speaker"}}])


BAD_CALLS = {
    "unparseable_arguments": ({"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"'}}]}, "messages[1].tool_calls[0].function.arguments"),
    "arguments_not_an_object": ({"role": "assistant", "tool_calls": [{"function": {
        "name": "get_weather", "arguments": '["Paris"]'}}]}, "not an object"),
    "no_name": ({"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}, "no function 'name'"),
    "unparseable_call_turn": ({"role": "function_call", "content": "get_weather(Paris)"}, "messages[1] is not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_tool_call_is_a_bad_row_naming_file_row_and_turn(word_tokenizer, tmp_path, case):
    bad_message, words = BAD_CALLS[case]
    bad = {"messages": [STRUCTURED[0], bad_message], "tools": TOOLS}
    rows = [OPENAI_ROW, bad, OPENAI_ROW]
    with pytest.raises(DataError) as raised:
        _prepare(word_tokenizer, tmp_path, rows)
    message = str(raised.value)
    assert "tools.jsonl, row 1:" in message and words in message and "[bad_tool_call]" in message
    data = _prepare(word_tokenizer, tmp_path, rows, on_bad_row="drop")
    assert data.stats["rows_dropped"] == {"bad_tool_call": 1} and len(data.train) == 2


def test_a_template_that_drops_tool_calls_is_a_counted_mismatch(word_tokenizer, tmp_path):
    no_tools = tmp_path / "no_tools.jinja"
    no_tools.write_text("{% for m in messages %}{{ m.role + ': ' + (m.content or '') + '\\n' }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")  # fmt: skip
    rows = [OPENAI_ROW, {"messages": [STRUCTURED[0], STRUCTURED[3]]}]
    with pytest.raises(DataError) as raised:
        _prepare(word_tokenizer, tmp_path, rows, chat_template=str(no_tools))
    # The row is fine, the template is not: the message names the built-in template that renders calls.
    message = str(raised.value)
    assert "row 0: the chat template cannot render this row's tool calls" in message
    assert "data.chat_template=chatml" in message and "[template_mismatch]" in message
    assert "on_bad_row=drop" not in message
    data = _prepare(word_tokenizer, tmp_path, rows, chat_template=str(no_tools), on_bad_row="drop")
    assert data.stats["rows_dropped"] == {"template_mismatch": 1}


def test_preview_shows_tool_calls_as_the_template_renders_them(tmp_path, capsys):
    from sft_exp.tools.preview import main

    plain = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [plain] * 5 + [SHAREGPT_ROW] + [plain] * 5)
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    overrides = [f"data.sources=[{{path:{path},name:tools}}]", "data.eval_split_size=0",
                 f"data.chat_template={template}", "data.assistant_only_loss=true"]  # fmt: skip
    assert main(["--plain", "--rows", "1", "--find", "<tool_call>", *overrides]) == 0
    out = capsys.readouterr().out
    assert out.count("--- training row") == 1 and "Hello" not in out  # only the row with a call
    assert '[[<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>]]' in out
    assert "<|im_start|>tool\nsunny<|im_end|>" in out  # the tool result, shown untrained
    assert main(["--plain", "--find", "no such text", *overrides]) == 0
    assert "no training row contains 'no such text'" in capsys.readouterr().out
