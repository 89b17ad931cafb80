"""Whether a chat template can render what a conversation holds (tool calls, tool results, images,
unusual roles). A template that cannot is a `template_mismatch` naming the built-in templates that can:
the row is fine, the template is the wrong one, so "fix the row or drop it" would be the wrong advice."""
from __future__ import annotations

from sft_exp.data.formats import BadRow

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
    if any(isinstance(m, dict) and isinstance(m.get("content"), list)
           and any(isinstance(p, dict) and p.get("type") == "image" for p in m["content"]) for m in messages):
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
    from sft_exp.data.templates import BUILTIN_TEMPLATES

    return [name for name, text in BUILTIN_TEMPLATES.items() if not unsupported(text, missing)]


def mismatch(template: str, messages: list, tools, error: Exception | None = None) -> BadRow | None:
    """A `template_mismatch` when the template cannot render one of the conversation's features, else None."""
    missing = unsupported(template, features(messages, tools))
    if not missing:
        return None
    able = templates_that_render(missing)
    fix = (f"set data.chat_template to one that can ({', '.join(able)}: e.g. data.chat_template={able[0]}) "
           "or to a .jinja file" if able else "set data.chat_template to a .jinja template that renders them")
    why = f" (it raised: {error})" if error is not None else ""
    return BadRow("template_mismatch", f"the chat template cannot render this row's {', '.join(missing)}{why}; "
                                       f"the row is fine: {fix}")


def check_calls_rendered(template: str, text: str, messages: list, tools) -> None:
    """A template that renders without error but leaves the tool calls out would train answers without them."""
    for message in messages:
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            name = (call.get("function") or call).get("name") if isinstance(call, dict) else None
            if name and name not in text:
                bad = mismatch(template, messages, tools) or BadRow(
                    "template_mismatch", f"the chat template renders no trace of the tool call {name!r}; "
                    "set data.chat_template=chatml (it renders <tool_call>) or a .jinja template that renders calls")
                raise bad
