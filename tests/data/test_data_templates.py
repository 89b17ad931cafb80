"""Fast rendering of `{% generation %}` templates equals transformers' own rendering, spans included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sft_exp.data.templates import _SPAN_START, CHATML, ZEPHYR, _compiled, has_generation_markers, render_conversation
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
    "strip both": MULTILINE.replace("{% generation %}", "{%- generation -%}").replace(
        "{% endgeneration %}", "{%- endgeneration -%}"
    ),
    "strip left": MULTILINE.replace("{% generation %}", "{%- generation %}").replace(
        "{% endgeneration %}", "{%- endgeneration %}"
    ),
    "strip right": MULTILINE.replace("{% generation %}", "{% generation -%}").replace(
        "{% endgeneration %}", "{% endgeneration -%}"
    ),
    "keep indent": MULTILINE.replace("{% generation %}", "{%+ generation %}").replace(
        "{% endgeneration %}", "{%+ endgeneration +%}"
    ),
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
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "12C"},
        {"role": "assistant", "content": "It is 12C."},
    ],
    [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "  spaced reply \n"}],
    # A reply that contains the sentinel itself: the fast path must notice and fall back.
    [{"role": "user", "content": "echo"}, {"role": "assistant", "content": f"x{_SPAN_START}y"}],
]
# Vision-language templates take content as a list of parts.
PARTS_CONVERSATION = [
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
]
TOOLS = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]


def _templates() -> dict[str, str]:
    from transformers import AutoTokenizer

    embedded = AutoTokenizer.from_pretrained(str(asset_path("tokenizer"))).chat_template
    return {"chatml": CHATML, "zephyr": ZEPHYR, "embedded tokenizer": embedded, **VARIANTS}


def _trl_training_templates() -> list[Path]:
    """TRL's own templates with generation markers (TRL is a dev extra; none when it is absent)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.origin:
        return []
    folder = Path(spec.origin).parent / "chat_templates"
    return sorted(path for path in folder.glob("*.jinja") if has_generation_markers(path.read_text()))


def _assert_renders_like_transformers(template: str, label: str, conversations=CONVERSATIONS) -> int:
    """Text and spans equal transformers' for every conversation the template accepts; how many it accepted."""
    variables = {"eos_token": "</s>", "bos_token": "<s>"}
    compared = 0
    for messages in conversations:
        for tools in (None, TOOLS):
            try:
                texts, spans = render_jinja_template(
                    conversations=[messages], tools=tools, chat_template=template, return_assistant_tokens_mask=True,
                    **variables,
                )  # fmt: skip
            except Exception:  # e.g. a template that refuses tool messages or a system role
                continue
            ours = render_conversation(template, messages, tools, variables, with_generation_spans=True)
            assert ours == (texts[0], [tuple(span) for span in spans[0]]), (label, messages)
            assert render_conversation(template, messages, tools, variables)[0] == texts[0]
            compared += 1
    return compared


@pytest.mark.parametrize("name", list(_templates()))
def test_generation_spans_match_transformers(name):
    template = _templates()[name]
    assert has_generation_markers(template)
    assert _assert_renders_like_transformers(template, name) == 2 * len(CONVERSATIONS)


@pytest.mark.parametrize("path", _trl_training_templates(), ids=lambda path: path.name)
def test_trl_training_templates_render_like_transformers(path):
    """Real templates nobody here wrote: the ones TRL ships for assistant-only training."""
    template = path.read_text()
    assert _compiled(template, True) is not None  # the fast path is the one compared
    assert _assert_renders_like_transformers(template, path.name, [*CONVERSATIONS, PARTS_CONVERSATION]) > 0


def test_a_template_that_filters_generation_output_falls_back_to_transformers():
    # `trim` strips the padding of a reply but not around a sentinel: the fast path must not be used.
    template = (
        "{% macro reply(text) %}{% generation %}{{ text }}{% endgeneration %}{% endmacro %}"
        "{% for m in messages %}<{{ m['role'] }}>{% if m['role'] == 'assistant' %}{{ reply(m['content']) | trim }}"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert not _compiled(template, True)
    _assert_renders_like_transformers(template, "trim macro")


def test_markers_are_found_whatever_the_whitespace_control():
    assert all(has_generation_markers(template) for template in VARIANTS.values())
    assert not has_generation_markers("{{ messages[0]['content'] }}{% if add_generation_prompt %}x{% endif %}")
