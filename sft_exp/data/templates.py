"""Chat templates: resolve `data.chat_template` to Jinja text, check it, render conversations with it,
and find the token it ends an assistant turn with.

Rendering goes through transformers' own `render_jinja_template` (imported on first render), so a
conversation renders here byte for byte as `tokenizer.apply_chat_template(..., tokenize=False)` renders
it at inference. A template's Jinja syntax is checked when the config is read (jinja2 only), and whether
it can render what a row holds (tool calls, images, unusual roles) is a `template_mismatch` naming the
built-in templates that can. The end-of-turn token is what generation stops at (models/stop_tokens.py).
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Optional

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols

from sft_exp.compat import compile_jinja_template
from sft_exp.errors import BadRow, ConfigError

log = logging.getLogger(__name__)


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
    from transformers.utils.chat_template_utils import render_jinja_template  # (settings' checks need no transformers)

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
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, spans = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        return_assistant_tokens_mask=with_generation_spans,
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
    return rendered[0], [tuple(span) for span in spans[0]] if with_generation_spans else []


# What a template's source must mention to render a conversation feature.
_NEEDS = {
    "tool calls": ("tool_calls",),
    "tool results (role tool)": ("tool",),
    "a tools list": ("tools",),
    "images": ("image",),
}


def features(messages: list, tools) -> list[str]:
    """The features of a conversation a template must render, in _NEEDS's words (plus unusual roles)."""
    found = []
    if any(isinstance(m, dict) and m.get("tool_calls") for m in messages):
        found.append("tool calls")
    if any(isinstance(m, dict) and m.get("role") == "tool" for m in messages):
        found.append("tool results (role tool)")
    if tools:
        found.append("a tools list")
    if any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image" for p in m["content"])
        for m in messages
    ):
        found.append("images")
    roles = {m.get("role") for m in messages if isinstance(m, dict)} - {"system", "user", "assistant", "tool"}
    found += [f"role {role}" for role in sorted(r for r in roles if r)]
    return found


def unsupported(template: str, wanted: list[str]) -> list[str]:
    """The features in `wanted` that `template`'s source never mentions."""
    missing = []
    for feature in wanted:
        needles = _NEEDS.get(feature) or (feature.removeprefix("role "),)
        if not any(needle in template for needle in needles):
            missing.append(feature)
    return missing


def templates_that_render(missing: list[str]) -> list[str]:

    return [name for name, text in BUILTIN_TEMPLATES.items() if not unsupported(text, missing)]


def mismatch(template: str, messages: list, tools, error: Exception | None = None) -> BadRow | None:
    """A `template_mismatch` when the template cannot render one of the conversation's features, else None."""
    missing = unsupported(template, features(messages, tools))
    if not missing:
        return None
    able = templates_that_render(missing)
    fix = (
        f"set data.chat_template to one that can ({', '.join(able)}: e.g. data.chat_template={able[0]}) "
        "or to a .jinja file"
        if able
        else "set data.chat_template to a .jinja template that renders them"
    )
    why = f" (it raised: {error})" if error is not None else ""
    return BadRow(
        "template_mismatch",
        f"the chat template cannot render this row's {', '.join(missing)}{why}; the row is fine: {fix}",
    )


def check_calls_rendered(template: str, text: str, messages: list, tools) -> None:
    """A template that renders without error but leaves the tool calls out would train answers without them."""
    for message in messages:
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            name = (call.get("function") or call).get("name") if isinstance(call, dict) else None
            if name and name not in text:
                bad = mismatch(template, messages, tools) or BadRow(
                    "template_mismatch",
                    f"the chat template renders no trace of the tool call {name!r}; "
                    "set data.chat_template=chatml (it renders <tool_call>) or a .jinja template that renders calls",
                )
                raise bad


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`, parsed as transformers' own extension parses it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


# The options transformers compiles chat templates with (chat_template_utils._compile_jinja_template).
_ENVIRONMENT = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols])


def syntax_error(template: str) -> tuple[int, str] | None:
    """(line, message) of the first Jinja syntax error in `template`; None when it parses."""
    try:
        _ENVIRONMENT.parse(template)
    except jinja2.TemplateSyntaxError as err:
        return err.lineno, err.message or "syntax error"
    return None


def describe_syntax_error(template: str, line: int, message: str) -> str:
    """ "line 3 of the template: unexpected '}' in `{%- if x }}`" """
    lines = template.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    shown = f" in `{text[:120]}`" if text else ""
    return f"line {line} of the template: {message}{shown}"


def check_template_syntax(template: str, where: str) -> None:
    """ConfigError naming `where` (the setting or file the template came from) and the line that does not parse."""
    error = syntax_error(template)
    if error is not None:
        raise ConfigError(
            f"{where}: the chat template is not valid Jinja, {describe_syntax_error(template, *error)}; "
            "fix the template"
        )


# The end of an assistant turn: what generation stops at (models/stop_tokens.py) and what data preparation
# warns about when a template has none.
_REPLY = "SFTEXPREPLY7"  # an answer no template rewrites; what follows it in the rendering ends the turn
_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}]


def _marker_tokens(tokenizer) -> dict:
    """Added and special tokens (text -> id): the only tokens that can mark an end of turn."""
    tokens = {t.content: i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for text in getattr(tokenizer, "all_special_tokens", []):
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            tokens.setdefault(text, token_id)
    return tokens


def end_of_turn_token(template: Optional[str], tokenizer) -> Optional[tuple]:
    """(text, id) of the token that follows the assistant's content when `template` renders one turn.

    None when nothing marks the end (the content is followed by plain text or nothing), the template
    cannot render a user-assistant turn, or there is no template (plain text: the tokenizer's EOS).
    """
    if not template:
        return None
    try:
        text, _ = render_conversation(template, _TURN, None, template_variables(tokenizer))
    except Exception as err:  # a template that refuses this turn: no end of turn to find
        log.debug("the chat template does not render a user/assistant turn: %s", err)
        return None
    at = text.rfind(_REPLY)
    if at < 0:
        return None
    after = text[at + len(_REPLY) :].lstrip(" \t")  # Llama-2 style templates put a space before EOS
    candidates = [(t, i) for t, i in _marker_tokens(tokenizer).items() if t and after.startswith(t)]
    return max(candidates, key=lambda item: len(item[0])) if candidates else None


def template_name(setting: Optional[str], template: Optional[str], tokenizer=None) -> str:
    """How a warning names the template: the data.chat_template setting, or the tokenizer's own."""
    if setting and len(setting) < 200 and "\n" not in setting:
        return f"data.chat_template={setting}"
    if setting is None:
        return f"the chat template of {getattr(tokenizer, 'name_or_path', None) or 'the tokenizer'} (data.chat_template=null)"
    return f"data.chat_template ({(template or '')[:60]!r}...)"


def warn_if_no_end_of_turn(template: Optional[str], tokenizer, setting: Optional[str]) -> None:
    """Data preparation: a template with no end-of-turn token teaches no stop, and the saved model runs on."""
    if template and end_of_turn_token(template, tokenizer) is None:
        log.warning(
            "%s ends an assistant turn with no special token (nothing special follows the assistant's content in "
            "a one-turn user/assistant conversation), so the "
            "model is not taught where to stop and the saved generation config can only stop at the tokenizer's "
            "EOS %r; use a template that closes each turn with a token (e.g. data.chat_template=chatml)",
            template_name(setting, template, tokenizer),
            tokenizer.eos_token,
        )
