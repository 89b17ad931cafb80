"""A chat template's Jinja syntax, checked when the config is read (jinja2 only: no transformers, no tokenizer),
so a template that cannot parse stops the run before anything loads, naming where it came from and its line."""
from __future__ import annotations

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols

from sft_exp.errors import ConfigError


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
        raise ConfigError(f"{where}: the chat template is not valid Jinja, {describe_syntax_error(template, *error)}; "
                          "fix the template")
