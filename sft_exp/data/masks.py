"""Which characters of a rendered conversation are trained, and which tokens that makes.

Assistant turns are found one of two exact ways:
- templates with `{% generation %}` markers report the character span of each block;
- templates without them (Qwen2.5, Llama 3, Phi-3, Mistral, Gemma, ...) are rendered prefix by
  prefix: turn i starts where `messages[:i]` + generation prompt ends, and ends where the render
  of `messages[:i+1]` leaves the full render. The generation prompt must be an exact prefix of
  the full conversation, and the assistant's content must lie inside its span; otherwise the
  row is reported (`template_mismatch`), never silently mis-masked.
Spans end after the turn's end-of-turn token(s); trailing whitespace is left untrained.
"""
from __future__ import annotations

from sft_exp.data.formats import BadRow, Conversation
from sft_exp.data.templates import has_generation_markers, render_conversation
from sft_exp.errors import ConfigError

Span = tuple[int, int]


def _render(template: str, messages, tools, variables, **kwargs) -> tuple[str, list[Span]]:
    try:
        return render_conversation(template, messages, tools, variables, **kwargs)
    except Exception as err:  # templates raise on inputs they refuse (roles out of order, system role, ...)
        raise BadRow("template_error", f"the chat template refused the conversation: {err}") from None


def _common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    low, high = 0, min(len(a), len(b))  # binary search on slice equality: C-speed compares
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _trim_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _check_content_inside(text: str, spans: list[Span], assistants: list[dict]) -> None:
    for (start, end), message in zip(spans, assistants):
        content = (message.get("content") or "").strip()
        if content and content not in text[start:end]:
            raise BadRow(
                "template_mismatch",
                f"the chat template does not render the assistant's reply {content[:40]!r} inside the span "
                "the masks expect; use a template with {% generation %} markers (e.g. data.chat_template=chatml)",
            )


def _spans_from_markers(conv: Conversation, template: str, variables: dict) -> tuple[str, list[Span]]:
    text, spans = _render(template, conv.messages, conv.tools, variables, with_generation_spans=True)
    assistants = [m for m in conv.messages if m["role"] == "assistant"]
    if len(spans) != len(assistants):
        raise BadRow(
            "template_mismatch",
            f"the chat template marks {len(spans)} generation block(s) for {len(assistants)} assistant turn(s)",
        )
    _check_content_inside(text, spans, assistants)
    return text, spans


def _spans_from_prefixes(conv: Conversation, template: str, variables: dict) -> tuple[str, list[Span]]:
    messages, tools = conv.messages, conv.tools
    text, _ = _render(template, messages, tools, variables)
    spans, assistants = [], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, _ = _render(template, messages[:i], tools, variables, add_generation_prompt=True)
        if not text.startswith(head):
            raise BadRow(
                "template_mismatch",
                f"the chat template renders the conversation before assistant turn {i} differently on its own "
                "than inside the full conversation, so its tokens cannot be masked exactly; use a template "
                "with {% generation %} markers",
            )
        upto, _ = _render(template, messages[: i + 1], tools, variables)
        end = _trim_end(text, len(head), _common_prefix_length(upto, text))
        spans.append((len(head), end))
        assistants.append(message)
    _check_content_inside(text, spans, assistants)
    return text, spans


def _intersect(spans: list[Span], region: Span) -> list[Span]:
    clipped = [(max(s, region[0]), min(e, region[1])) for s, e in spans]
    return [(s, e) for s, e in clipped if s < e]


def conversation_spans(
    conv: Conversation,
    template: str,
    variables: dict,
    *,
    assistant_only: bool,
    completion_only: bool,
    markers: bool,
) -> tuple[str, list[Span] | None]:
    """The rendered conversation and the character spans to train (None: train every token)."""
    if assistant_only:
        find = _spans_from_markers if markers else _spans_from_prefixes
        text, spans = find(conv, template, variables)
    else:
        text, _ = _render(template, conv.messages, conv.tools, variables)
        spans = None
    if completion_only and conv.n_prompt is not None:
        prompt = conv.messages[: conv.n_prompt]
        head, _ = _render(template, prompt, conv.tools, variables, add_generation_prompt=True)
        if not text.startswith(head):
            raise BadRow(
                "template_mismatch",
                "the chat template renders the prompt (with its generation prompt) differently than the "
                "start of prompt + completion, so the completion cannot be masked exactly",
            )
        region = (len(head), _trim_end(text, len(head), len(text)))
        spans = [region] if spans is None else _intersect(spans, region)
    return text, spans


def _first_token_at_or_after(encoding, char: int, n_tokens: int) -> int:
    """Index of the first token that starts at or after `char` (a token straddling `char` is left out)."""
    token = encoding.char_to_token(char)
    probe = char
    while token is None and probe < char + 8:  # characters some tokenizers drop (e.g. spaces)
        probe += 1
        token = encoding.char_to_token(probe)
    if token is None:
        return n_tokens
    if encoding.token_to_chars(token)[0] < char:
        token += 1
    return token


def _last_token_before(encoding, char: int) -> int | None:
    """Index of the last token that starts before `char`."""
    probe = char - 1
    token = encoding.char_to_token(probe)
    while token is None and probe > max(char - 8, 0):
        probe -= 1
        token = encoding.char_to_token(probe)
    return token


def labels_from_spans(encoding, spans: list[Span] | None) -> list[int]:
    """Per-token labels: the token id inside a trained span, -100 elsewhere (tokens are not shifted)."""
    ids = encoding.ids
    if spans is None:
        return list(ids)
    labels = [-100] * len(ids)
    for start, end in spans:
        first = _first_token_at_or_after(encoding, start, len(ids))
        last = _last_token_before(encoding, end)
        if last is not None and last >= first:
            labels[first : last + 1] = ids[first : last + 1]
    return labels


_PROBE = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]


def check_template_can_mask(template: str, variables: dict) -> None:
    """Fail early, before any row is read, when assistant_only_loss cannot work with this template."""
    conv = Conversation(_PROBE, None, None)
    try:
        conversation_spans(
            conv, template, variables, assistant_only=True, completion_only=False, markers=has_generation_markers(template)
        )
    except BadRow as bad:
        raise ConfigError(
            f"data.assistant_only_loss=true, but the chat template cannot mark assistant turns exactly ({bad.detail}); "
            "use data.chat_template=chatml (or another template with {% generation %} markers)"
        ) from None
