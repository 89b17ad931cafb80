"""Rows -> a Hydra experiment file (`# @package _global_`): group choices as defaults-list overrides, every
value at its key, the recipe field it came from as a comment. TRL's defaults give way to what the recipe and
the accelerate config say."""

from __future__ import annotations

from typing import Any

import yaml

from sft_exp.recipe_import.rows import GROUP, Row

# Group choices that replace a whole group node: an experiment's values for them go below the override.
HEADER = "# @package _global_\n"


class Conflict(Exception):
    """Two fields set one key to different values (a bug in a handler, or a recipe that says two things)."""


def collect(rows: list[Row]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(group choices, values by dotted key, the recipe field of each key), in the order the rows name them. An
    explicit field wins over TRL's defaults; two explicit fields that disagree are a Conflict."""
    groups, values, origin, explicit = {}, {}, {}, set()
    for row in rows:
        for setting in row.settings:
            target = groups if setting.key.startswith(GROUP) else values
            key = setting.key.removeprefix(GROUP)
            if row.default and setting.key in explicit:
                continue
            if setting.key in explicit and target[key] != setting.value:
                raise Conflict(
                    f"{row.field} sets {setting.key}={setting.value!r}, but {origin[setting.key]} "
                    f"set it to {target[key]!r}"
                )
            target[key] = setting.value
            if row.default:
                origin.setdefault(setting.key, f"{row.field} (TRL default)")
            elif setting.key not in explicit:
                origin[setting.key] = row.field
                explicit.add(setting.key)
    return groups, values, origin


def nest(values: dict[str, Any]) -> dict:
    """{"a.b.0.c": 1} -> {"a": {"b": [{"c": 1}]}}: a number is a list position."""
    root: dict = {}
    for key, value in values.items():
        parts = key.split(".")
        node: Any = root
        for part, following in zip(parts, parts[1:]):
            child = [] if following.isdigit() else {}
            if part.isdigit():
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                node[index] = child if node[index] is None else node[index]
                node = node[index]
            else:
                node = node.setdefault(part, child)
        last = parts[-1]
        if last.isdigit():
            while len(node) <= int(last):
                node.append(None)
            node[int(last)] = value
        elif isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last].update(value)
        else:
            node[last] = value
    return root


def _scalar(value: Any) -> str:
    """One YAML value on one line; `${` escaped so OmegaConf reads a recipe's text as text."""
    if isinstance(value, str):
        value = value.replace("${", "\\${")
    text = yaml.safe_dump([value], default_flow_style=True, width=float("inf"), allow_unicode=True).strip()
    return text[1:-1]  # the value inside its one-element list


def _lines(node: dict, origin: dict[str, str], prefix: str = "", indent: int = 0) -> list[str]:
    lines = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        pad = " " * indent
        if isinstance(value, dict) and value and dotted not in origin:  # a mapping several fields fill
            lines.append(f"{pad}{key}:")
            lines += _lines(value, origin, f"{dotted}.", indent + 2)
            continue
        field = origin.get(dotted) or _field_under(dotted, origin)
        lines.append(f"{pad}{key}: {_scalar(value)}" + (f"  # {field}" if field else ""))
    return lines


def _field_under(dotted: str, origin: dict[str, str]) -> str:
    fields = sorted({field for key, field in origin.items() if key.startswith(dotted + ".")})
    return ", ".join(fields)


def experiment_text(rows: list[Row], header_lines: list[str]) -> str:
    groups, values, origin = collect(rows)
    overrides = [
        f"  - override /{group}: {_scalar(option)}  # {origin[GROUP + group]}" for group, option in groups.items()
    ]
    body = _lines(nest(values), origin)
    return "".join(
        f"{line}\n" for line in [HEADER.rstrip(), *header_lines, "defaults:", *overrides, "  - _self_", "", *body]
    )
