"""Which characters of a rendered conversation are trained, and which tokens that makes.

Assistant turns are found one of two exact ways:
- templates with `{% generation %}` markers report the character span of each block;
- templates without them (Qwen2.5, Llama 3, Phi-3, Mistral, Gemma, ...) are rendered prefix by
  prefix: turn i starts where `messages[:i]` + generation prompt ends, and ends after its content
  plus what follows that content in the render of `messages[:i+1]` and is repeated in the full
  render (the end-of-turn tokens). Both prefixes must be exact prefixes where expected, and the
  content must be rendered verbatim; otherwise the row is reported (`template_mismatch`), never
  silently mis-masked.
Spans end after the turn's end-of-turn token(s); only tokens wholly inside a span are trained,
and whitespace-only tokens after the end of turn are not (the model never generates them).
"""

from __future__ import annotations

import functools
import json

from sft_exp.data.formats import Conversation
from sft_exp.data.templates import has_generation_markers, render_conversation
from sft_exp.data.turns import DEFAULT_POLICY, LossPolicy, Turn, has_reasoning, weighted_spans
from sft_exp.errors import BadRow, ConfigError

Span = tuple[int, int]
WeightedSpan = tuple[int, int, float]


def _render(template: str, messages, tools, variables, **kwargs) -> tuple[str, list[Span]]:
    from sft_exp.data.templates import mismatch

    try:
        return render_conversation(template, messages, tools, variables, **kwargs)
    except Exception as err:  # templates raise on inputs they refuse (roles out of order, system role, ...)
        # A template that cannot render tool calls, images or a role: the template is wrong, not the row.
        raise mismatch(template, messages, tools, err) or BadRow(
            "template_error", f"the chat template refused the conversation: {err}"
        ) from None


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


def _mismatch(detail: str) -> BadRow:
    return BadRow("template_mismatch", detail + "; use a template with {% generation %} markers (e.g. chatml)")


def _anchor(message: dict) -> str:
    """What the turn renders verbatim: its reply, else (a tool-call turn) its first call's function name.
    Qwen3 renders an empty <think> block before a turn only when it ends the conversation, so the
    renders through the turn and of the whole conversation agree only from such an anchor on."""
    content = (message.get("content") or "").strip()
    if "</think>" in content and content.split("</think>")[-1].strip():
        # Reasoning in the content: templates such as Qwen3's drop it from earlier turns; the answer stays.
        content = content.split("</think>")[-1].strip()
    calls = message.get("tool_calls")
    if content or not calls or not isinstance(calls[0], dict):
        return content
    name = calls[0].get("function", calls[0]).get("name")
    return name if isinstance(name, str) else ""


def _assistant_span(text: str, head: str, upto: str, message: dict) -> Span:
    """Span of one assistant turn in `text`, given the render before it (+ generation prompt) and through it.

    The turn ends after its content and the longest run of what follows the content in `upto` that
    `text` repeats (the end-of-turn tokens; `upto` may add end-of-conversation text that `text` has not).
    """
    start = len(head)
    content = _anchor(message)
    anchor_text = anchor_upto = start
    if content:  # templates may trim the content or put a header (e.g. an empty <think> block) before it
        found_text, found_upto = text.find(content, start), upto.find(content, start)
        if found_text < 0 or found_upto < 0:
            what = "reply" if message.get("content") else "tool call"  # (a template without tool support)
            raise _mismatch(f"the chat template does not render the assistant's {what} {content[:40]!r} verbatim")
        anchor_text, anchor_upto = found_text + len(content), found_upto + len(content)
    end = anchor_text + _common_prefix_length(upto[anchor_upto:], text[anchor_text:])
    return start, _trim_end(text, start, end)


def _spans_from_prefixes(conv: Conversation, template: str, variables: dict) -> tuple[str, list[Span]]:
    messages, tools = conv.messages, conv.tools
    text, _ = _render(template, messages, tools, variables)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, _ = _render(template, messages[:i], tools, variables, add_generation_prompt=True)
        upto, _ = _render(template, messages[: i + 1], tools, variables)
        if not (text.startswith(head) and upto.startswith(head)):
            raise _mismatch(
                f"the chat template renders the conversation before assistant turn {i} differently on its own "
                "than inside the full conversation, so its tokens cannot be masked exactly"
            )
        spans.append(_assistant_span(text, head, upto, message))
    return text, spans


def _intersect(spans: list[WeightedSpan], region: Span) -> list[WeightedSpan]:
    clipped = [(max(s, region[0]), min(e, region[1]), w) for s, e, w in spans]
    return [(s, e, w) for s, e, w in clipped if s < e]


@functools.lru_cache(maxsize=16)
def _end_of_turn(template: str, variables_json: str, markers: bool) -> str:
    """What the template renders after an assistant reply to end its turn (e.g. `<|im_end|>`), from a probe."""
    conv = Conversation(_PROBE[:2], None, None)
    find = _spans_from_markers if markers else _spans_from_prefixes
    try:
        text, spans = find(conv, template, json.loads(variables_json))
    except BadRow:
        return ""
    start, end = spans[0]
    found = text.find("Four.", start, end)
    return text[found + len("Four.") : end].strip() if found >= 0 else ""


def _message_turn(conv: Conversation, index: int, text: str, template: str, variables: dict) -> Turn:
    """A non-assistant message's turn, by prefix renders: from its content to where the next message starts."""
    messages, tools = conv.messages, conv.tools
    head = _render(template, messages[:index], tools, variables)[0] if index else ""
    upto, _ = _render(template, messages[: index + 1], tools, variables)
    content = (messages[index].get("content") or "").strip()
    if not (text.startswith(head) and upto.startswith(head)):
        # Templates such as Qwen3's render the reasoning of an assistant turn that ends `messages[:index]`, and
        # drop it once a later user message follows, as in `text`: the render through this message agrees.
        return _turn_from_its_render(index, text, upto, content)
    end = len(head) + _common_prefix_length(upto[len(head) :], text[len(head) :])
    found = text.find(content, len(head), end) if content else -1
    start, content_end = (found, found + len(content)) if found >= 0 else (len(head), end)
    return Turn(index, start, content_end, _trim_end(text, content_end, end))


def _turn_from_its_render(index: int, text: str, upto: str, content: str) -> Turn:
    """The turn of message `index` from the render that ends with it (`upto`), where that render is `text`'s
    prefix through the message: its content is the last rendering of that content in `upto`."""
    found = upto.rfind(content) if content else -1
    end = _common_prefix_length(upto, text)
    if found < 0 or found + len(content) > end:
        raise _mismatch(
            f"the chat template renders the conversation before message {index} differently on its own "
            "than inside the full conversation"
        )
    content_end = found + len(content)
    return Turn(index, found, content_end, _trim_end(text, content_end, end))


def _turns(
    conv: Conversation, text: str, spans: list[Span], template: str, variables: dict, markers: bool, policy: LossPolicy
) -> list[Turn]:
    """Every turn the policy may train or whose end of turn it may train, in message order."""
    eot = _end_of_turn(template, json.dumps(variables, sort_keys=True, default=str), markers)
    assistants = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
    turns = []
    for index, (start, end) in zip(assistants, spans):
        body = text[start:end].rstrip()
        content_end = start + len(body) - len(eot) if eot and body.endswith(eot) else end
        turns.append(Turn(index, start, content_end, end))
    forced = {i for i, loss in enumerate(conv.message_losses or []) if loss.train}
    for index, message in enumerate(conv.messages):
        wanted = message["role"] in policy.roles_to_train or index in forced or policy.train_on_eot == "all"
        if message["role"] != "assistant" and wanted:
            turns.append(_message_turn(conv, index, text, template, variables))
    return sorted(turns)


def conversation_spans(
    conv: Conversation,
    template: str,
    variables: dict,
    *,
    assistant_only: bool,
    completion_only: bool,
    markers: bool,
    policy: LossPolicy = DEFAULT_POLICY,
) -> tuple[str, list[WeightedSpan] | None]:
    """The rendered conversation and the weighted character spans to train (None: train every token)."""
    from sft_exp.data.templates import check_calls_rendered, mismatch

    unfit = mismatch(template, conv.messages, conv.tools)  # its source never mentions tool calls, images, ...
    if unfit is not None:
        raise unfit
    if assistant_only:
        find = _spans_from_markers if markers else _spans_from_prefixes
        text, turn_spans = find(conv, template, variables)
        if policy.is_default and conv.message_losses is None and not has_reasoning(conv):
            spans = [(s, e, 1.0) for s, e in turn_spans]
        else:
            spans = weighted_spans(
                text, _turns(conv, text, turn_spans, template, variables, markers, policy), conv, policy
            )
    else:
        if conv.message_losses is not None:
            where = next(
                loss.where for loss in conv.message_losses if loss.weight is not None or loss.train is not None
            )
            raise BadRow(
                "bad_weight", f"{where} sets a weight or train flag, which needs data.assistant_only_loss=true"
            )
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
        spans = [(*region, 1.0)] if spans is None else _intersect(spans, region)
    check_calls_rendered(template, text, conv.messages, conv.tools)
    return text, spans


def _token_at(encoding, char: int, step: int, limit: int) -> int | None:
    """The token covering `char`, or, for characters no token covers (e.g. dropped spaces), the next one in `step` direction."""
    for probe in range(char, limit, step):
        token = encoding.char_to_token(probe)
        if token is not None:
            return token
    return None


def trained_token_ranges(
    encoding, spans: list[WeightedSpan] | None, text: str | None = None
) -> list[tuple[int, int, float]]:
    """Token ranges [first, stop) to train, with their weight: the tokens lying wholly inside a trained character span.

    A token that straddles a span edge is not trained (it is partly prompt, or partly the next turn).
    Given `text`, whitespace-only tokens that end a span are not trained either: they follow the
    end-of-turn token, and the model never generates them. `spans=None` trains every token.
    """
    if spans is None:
        return [(0, len(encoding), 1.0)]
    ranges = []
    for start, end, weight in spans:
        if end <= start:
            continue
        first = _token_at(encoding, start, 1, end)
        last = _token_at(encoding, end - 1, -1, start - 1)
        if first is None or last is None:
            continue
        if encoding.token_to_chars(first)[0] < start:
            first += 1
        if encoding.token_to_chars(last)[1] > end:
            last -= 1
        while text is not None and last >= first and text[slice(*encoding.token_to_chars(last))].isspace():
            last -= 1
        if last >= first:
            ranges.append((first, last + 1, weight))
    return ranges


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
            conv,
            template,
            variables,
            assistant_only=True,
            completion_only=False,
            markers=has_generation_markers(template),
        )
    except BadRow as bad:
        raise ConfigError(
            f"data.assistant_only_loss=true, but the chat template cannot mark assistant turns exactly: {bad.detail}"
        ) from None
