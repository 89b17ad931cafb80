"""Chat templates: resolve `data.chat_template` to Jinja text, and render conversations with it.

Rendering goes through transformers' own `render_jinja_template`, so a conversation renders here
byte for byte as `tokenizer.apply_chat_template(..., tokenize=False)` renders it at inference.
"""
from __future__ import annotations

import re
from pathlib import Path

from transformers.utils import chat_template_utils
from transformers.utils.chat_template_utils import render_jinja_template

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

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def is_template_text(value: str) -> bool:
    """A literal Jinja template passed inline (rather than a name or a file path)."""
    return "{%" in value or "{{" in value


def check_chat_template_setting(value: str | None) -> None:
    """Cheap config-time check of `data.chat_template` (no tokenizer needed)."""
    if value is None or value in BUILTIN_TEMPLATES or is_template_text(value):
        return
    path = Path(value).expanduser()
    if path.suffix != ".jinja":
        raise ConfigError(
            f"data.chat_template={value!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor a path to a .jinja file; use one of those, or null for the tokenizer's own template"
        )
    if not path.is_file():
        raise ConfigError(f"data.chat_template: the template file {path} does not exist; check the path")


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
    return bool(_GENERATION_TAG.search(template))


def template_variables(tokenizer) -> dict:
    """What apply_chat_template passes to a template besides the messages (bos_token, eos_token, ...)."""
    return {key: value for key, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _fast_render(template, messages, tools, variables, add_generation_prompt, with_generation_spans):
    """transformers' own compiled template, rendered without re-copying inputs that are already plain JSON.

    Same environment, same output as render_jinja_template; returns None where this transformers
    version lacks the pieces (the caller then uses the public function).
    """
    compile_template = getattr(chat_template_utils, "_compile_jinja_template", None)
    if compile_template is None or any(key in m for m in messages for key in _REASONING_FIELDS):
        return None  # reasoning fields are aliased by the public function; rare enough to take the slow path
    compiled = compile_template(template)
    kwargs = dict(messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt)
    if not with_generation_spans:
        return compiled.render(**kwargs, **variables), []
    activate = getattr(compiled.environment, "activate_tracker", None)
    if activate is None:
        return None
    blocks, spans = [], []
    with activate(blocks, spans):
        for block in compiled.generate(**kwargs, **variables):
            blocks.append(block)
    return "".join(blocks), [tuple(span) for span in spans]


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
