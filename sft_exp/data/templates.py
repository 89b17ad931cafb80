"""Chat templates: resolve `data.chat_template` to Jinja text, and render conversations with it.

Rendering goes through transformers' own `render_jinja_template`, so a conversation renders here
byte for byte as `tokenizer.apply_chat_template(..., tokenize=False)` renders it at inference.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

from sft_exp.compat import compile_jinja_template
from sft_exp.data.template_syntax import check_template_syntax
from sft_exp.errors import ConfigError

# ChatML with `{% generation %}` around what the assistant writes, its <|im_end|> included, so the
# model learns to stop. Tool calls go inside the assistant turn; tool results get their own role.
CHATML = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- 'You can call these tools:\\n' }}{%- for tool in tools %}{{- tool | tojson + '\\n' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}"
    "{{- message['content'] if message['content'] is defined and message['content'] else '' }}"
    "{%- for call in message['tool_calls'] if message['tool_calls'] is defined %}"
    "{{- '<tool_call>\\n' + (call['function'] if call['function'] is defined else call) | tojson + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Zephyr (HuggingFaceH4/zephyr-7b-beta's layout): each turn ends with the EOS token.
ZEPHYR = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + eos_token + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)

BUILTIN_TEMPLATES = {"chatml": CHATML, "zephyr": ZEPHYR}


def is_template_text(value: str) -> bool:
    """A literal Jinja template passed inline (rather than a name or a file path)."""
    return "{%" in value or "{{" in value


def check_chat_template_setting(value: str | None) -> None:
    """Cheap config-time check of `data.chat_template` (no tokenizer needed): a name, a file, Jinja that parses."""
    if value is None or value in BUILTIN_TEMPLATES:
        return
    if is_template_text(value):
        check_template_syntax(value, "data.chat_template")
        return
    path = Path(value).expanduser()
    if path.suffix != ".jinja":
        raise ConfigError(
            f"data.chat_template={value!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor a path to a .jinja file; use one of those, or null for the tokenizer's own template"
        )
    if not path.is_file():
        raise ConfigError(f"data.chat_template: the template file {path} does not exist; check the path")
    check_template_syntax(path.read_text(), f"data.chat_template={value}")


def resolve_chat_template(value: str | None, tokenizer) -> str | None:
    """The Jinja text to render with: the tokenizer's own (None if it has none), a built-in, or a file."""
    check_chat_template_setting(value)
    if value is None:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # older tokenizers keep named templates
            own = own.get("default")
        return own
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if is_template_text(value):
        return value
    return Path(value).expanduser().read_text()


def has_generation_markers(template: str) -> bool:
    return any(not match.group(2) for match in _GENERATION_TAGS.finditer(template))


def template_variables(tokenizer) -> dict:
    """What apply_chat_template passes to a template besides the messages (bos_token, eos_token, ...)."""
    return {key: value for key, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}


_REASONING_FIELDS = frozenset(("reasoning_content", "thinking", "reasoning"))

# `{% generation %}` blocks rendered as plain output between two sentinel strings: the spans are
# where the sentinels were. Each tag becomes two `if true` tags around the sentinel, the first with
# the tag's left whitespace control and the second with its right one, so trim_blocks, lstrip_blocks
# and `-`/`+` strip exactly what the original tag stripped. Rendering this way skips the tracker's
# per-block macro call and is ~2x faster; any output the sentinels do not parse falls back to it.
_SPAN_START, _SPAN_END = "\ue000\ue00a\ue00b", "\ue001\ue00a\ue00b"  # private-use characters
_GENERATION_TAGS = re.compile(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}")


def _sentinel_tag(match: re.Match) -> str:
    left, end, right = match.groups()
    if end:
        return f"{{%{left} endif %}}{{{{ '{_SPAN_END}' }}}}{{% endif {right}%}}"
    return f"{{%{left} if true %}}{{{{ '{_SPAN_START}' }}}}{{% if true {right}%}}"


# Replies padded with whitespace: a template that filters a generation block's output (e.g. a macro
# piped through `trim`) strips the padding around the reply but not around a sentinel, so it shows.
_PROBES = (
    [{"role": "system", "content": " s "}, {"role": "user", "content": "  u  "},
     {"role": "assistant", "content": "  a \n"}, {"role": "user", "content": "u2"}, {"role": "assistant", "content": "\n b  "}],
    [{"role": "user", "content": "  u  "}, {"role": "assistant", "content": "  a \n"}],
)  # fmt: skip


def _sentinels_agree(template: str, compiled) -> bool:
    """Whether sentinel rendering gives transformers' text and spans on the probe conversations."""
    variables = {"bos_token": "<s>", "eos_token": "</s>"}
    for messages in _PROBES:
        try:
            texts, spans = render_jinja_template(
                conversations=[messages], chat_template=template, return_assistant_tokens_mask=True, **variables
            )
        except Exception:  # the template refuses this probe (roles, system message, ...)
            continue
        kwargs = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": False}
        try:
            ours = _cut_sentinels(compiled.render(**kwargs, **variables))
        except Exception:  # rendered by transformers but not with sentinels: do not use them
            return False
        if ours != (texts[0], [tuple(span) for span in spans[0]]):
            return False
    return True  # (no probe renders: nothing to compare; every row's spans are still checked against its replies)


@functools.lru_cache(maxsize=8)
def _compiled(template: str, with_sentinels: bool):
    """The compiled template (None: use the public function), with sentinels for generation spans."""
    compile_template = compile_jinja_template()
    if compile_template is None:
        return None  # this transformers version lacks it
    if not with_sentinels:
        return compile_template(template)
    compiled = compile_template(_GENERATION_TAGS.sub(_sentinel_tag, template))
    return compiled if _sentinels_agree(template, compiled) else None


def _cut_sentinels(rendered: str) -> tuple[str, list[tuple[int, int]]] | None:
    """The text without sentinels and the spans they marked; None unless they strictly alternate."""
    pieces = rendered.split(_SPAN_START)
    text, spans = [pieces[0]], []
    length = len(pieces[0])
    if _SPAN_END in pieces[0]:
        return None
    for piece in pieces[1:]:
        inner = piece.split(_SPAN_END)
        if len(inner) != 2:
            return None
        spans.append((length, length + len(inner[0])))
        text += inner
        length += len(inner[0]) + len(inner[1])
    return "".join(text), spans


def _fast_render(template, messages, tools, variables, add_generation_prompt, with_generation_spans):
    """transformers' own compiled template, rendered without re-copying inputs that are already plain JSON.

    Same environment, same output as render_jinja_template; returns None where this transformers
    version lacks the pieces or the fast path cannot be sure (the caller then uses the public function).
    """
    if any(not _REASONING_FIELDS.isdisjoint(message) for message in messages):
        return None  # reasoning fields are aliased by the public function; rare enough to take the slow path
    compiled = _compiled(template, with_generation_spans)
    if compiled is None:
        return None
    rendered = compiled.render(
        messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
    )
    if not with_generation_spans:
        return rendered, []
    return _cut_sentinels(rendered)


def render_conversation(
    template: str,
    messages: list[dict],
    tools: list | None,
    variables: dict,
    *,
    add_generation_prompt: bool = False,
    with_generation_spans: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text, and the character spans of `{% generation %}` blocks when asked for."""
    fast = _fast_render(template, messages, tools, variables, add_generation_prompt, with_generation_spans)
    if fast is not None:
        return fast
    rendered, spans = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        return_assistant_tokens_mask=with_generation_spans,
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
    return rendered[0], [tuple(span) for span in spans[0]] if with_generation_spans else []
