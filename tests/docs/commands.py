"""The shell commands the README and the docs show, read out of their ```bash blocks."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = sorted(
    [REPO / "README.md", REPO / "benchmarks" / "README.md", REPO / "tests" / "README.md", *(REPO / "docs").glob("*.md")]
)
FENCE = re.compile(r"^\s*```(\w*)\s*$")
LAUNCHERS = ("python", "torchrun", "accelerate")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line, for the failure message
    argv: tuple[str, ...]

    @property
    def module(self) -> str | None:
        """The module after `-m` (`sft_exp`, `sft_exp.report`, ...), or None for other commands."""
        for flag, value in zip(self.argv, self.argv[1:]):
            if flag == "-m" and value.startswith("sft_exp"):
                return value
        return None

    @property
    def args(self) -> list[str]:
        """What follows the module: overrides and flags."""
        return list(self.argv[self.argv.index(self.module) + 1 :])


def bash_blocks(path: Path):
    """(first line number, text) of every ```bash block, continuation lines joined."""
    lines, start, inside, kind = [], 0, False, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence and not inside:
            inside, kind, start, lines = True, fence.group(1), number + 1, []
        elif fence and inside:
            inside = False
            if kind in ("bash", "sh", "shell"):
                yield from _joined(start, lines)
        elif inside:
            lines.append(line)


def _joined(start: int, lines: list[str]):
    text, first = "", None
    for number, line in enumerate(lines, start):
        first = number if first is None else first
        if line.rstrip().endswith("\\"):
            text += line.rstrip()[:-1] + " "
            continue
        yield first, text + line
        text, first = "", None


def doc_commands() -> list[DocCommand]:
    """Every command of the docs that runs a module of sft_exp (several per line when joined by && or ;)."""
    found = []
    for path in DOC_FILES:
        for number, line in bash_blocks(path):
            tokens = shlex.split(line, comments=True)
            for part in _split_on(tokens, ("&&", ";", "||", "|")):
                command = DocCommand(f"{path.relative_to(REPO)}:{number}", tuple(part))
                if part and part[0] in LAUNCHERS and command.module:
                    found.append(command)
    return found


def _split_on(tokens: list[str], separators) -> list[list[str]]:
    parts, current = [], []
    for token in tokens:
        if token in separators:
            parts.append(current)
            current = []
        else:
            current.append(token)
    return [*parts, current]


INLINE = re.compile(r"`((?:python|torchrun|accelerate)[^`]*?-m sft_exp[^`]*)`")


def inline_commands() -> list[DocCommand]:
    """Commands written inline in the prose (`python -m sft_exp ...`). One with a placeholder (`<engine>`,
    `...`) is a pattern, not a command, and is left out."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in INLINE.finditer(text):
            span = " ".join(match.group(1).split())
            if "<" in span or "..." in span:
                continue
            number = text.count("\n", 0, match.start()) + 1
            command = DocCommand(f"{path.relative_to(REPO)}:{number}", tuple(shlex.split(span)))
            if command.module:
                found.append(command)
    return found
