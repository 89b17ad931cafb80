"""Fast rendering of `{% generation %}` templates equals transformers' own rendering, spans included."""
from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sft_exp.data.templates import CHATML, ZEPHYR, _SPAN_START, has_generation_markers, render_conversation
from sft_exp.paths import asset_path

# Whitespace control around the tags matters: each variant strips (or keeps) different newlines
# and indentation under transformers' trim_blocks + lstrip_blocks.
MULTILINE = """{%- for message in messages %}
    <{{ message['role'] }}>
    {%- if message['role'] == 'assistant' %}
        {% generation %}
        {{ message['content'] }}</s>
        {% endgeneration %}
        (end of turn)
    {%- else %} {{ message['content'] }}
    {% endif %}
{% endfor %}"""
VARIANTS = {
    "plain": MULTILINE,
    "strip both": MULTILINE.replace("{% generation %}", "{%- generation -%}").replace("{% endgeneration %}", "{%- endgeneration -%}"),
    "strip left": MULTILINE.replace("{% generation %}", "{%- generation %}").replace("{% endgeneration %}", "{%- endgeneration %}"),
    "strip right": MULTILINE.replace("{% generation %}", "{% generation -%}").replace("{% endgeneration %}", "{% endgeneration -%}"),
    "keep indent": MULTILINE.replace("{% generation %}", "{%+ generation %}").replace("{% endgeneration %}", "{%+ endgeneration +%}"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": " spaced \n"},
        {"role": "assistant", "content": "\nline one\n\nline two  "},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "done"},
    ],
    [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "12C"},
        {"role": "assistant", "content": "It is 12C."},
    ],
    # A reply that contains the sentinel itself: the fast path must notice and fall back.
    [{"role": "user", "content": "echo"}, {"role": "assistant", "content": f"x{_SPAN_START}y"}],
]
TOOLS = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]


def _templates() -> dict[str, str]:
    from transformers import AutoTokenizer

    embedded = AutoTokenizer.from_pretrained(str(asset_path("tokenizer"))).chat_template
    return {"chatml": CHATML, "zephyr": ZEPHYR, "embedded tokenizer": embedded, **VARIANTS}


@pytest.mark.parametrize("name", list(_templates()))
def test_generation_spans_match_transformers(name):
    template = _templates()[name]
    assert has_generation_markers(template)
    variables = {"eos_token": "</s>", "bos_token": "<s>"}
    for messages in CONVERSATIONS:
        for tools in (None, TOOLS):
            ours = render_conversation(template, messages, tools, variables, with_generation_spans=True)
            texts, spans = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=template, return_assistant_tokens_mask=True, **variables
            )
            assert ours == (texts[0], [tuple(span) for span in spans[0]]), (name, messages)
            plain = render_conversation(template, messages, tools, variables)[0]
            assert plain == texts[0]


def test_markers_are_found_whatever_the_whitespace_control():
    assert all(has_generation_markers(template) for template in VARIANTS.values())
    assert not has_generation_markers("{{ messages[0]['content'] }}{% if add_generation_prompt %}x{% endif %}")
