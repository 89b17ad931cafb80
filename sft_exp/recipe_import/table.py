"""The one table an import prints: recipe field -> sft_exp key -> value, and where sft_exp's meaning differs."""

from __future__ import annotations

from typing import Any

from sft_exp.recipe_import.rows import GROUP, Row

COLUMNS = ("recipe field", "sft_exp key", "value", "differs from TRL / open-r1 (*)")
MAX_VALUE = 48


def _value(value: Any) -> str:
    import json

    text = value if isinstance(value, str) and value else json.dumps(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_VALUE else f"{text[: MAX_VALUE - 12]}... ({len(text)} chars)"


def _field(row: Row) -> str:
    if row.default:
        return f"{row.field} (TRL default)"
    return f"{row.field} (now {row.stale})" if row.stale else row.field


def table_lines(rows: list[Row], skipped: list[tuple[str, str]]) -> list[str]:
    """One line per setting (a field with none: one line with '-'); skipped fields (--allow-unmapped) last."""
    cells = []
    for row in rows:
        mark = f"* {row.note}" if row.note else row.info
        settings = row.settings or [None]
        for i, setting in enumerate(settings):
            if setting is None:
                key, value = "-", ""
            elif setting.key.startswith(GROUP):
                key, value = f"{setting.key.removeprefix(GROUP)}=", _value(setting.value)
            else:
                key, value = setting.key, _value(setting.value)
            cells.append((_field(row) if i == 0 else "", key, value, mark if i == 0 else ""))
    cells += [(name, "SKIPPED (no sft_exp form)", "", why) for name, why in skipped]
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(3)]
    line = lambda c: "  ".join(str(v).ljust(w) for v, w in zip(c[:3], widths)) + "  " + c[3]  # noqa: E731
    return [
        line(COLUMNS).rstrip(),
        "  ".join("-" * w for w in widths) + "  " + "-" * len(COLUMNS[3]),
        *(line(c).rstrip() for c in cells),
    ]
