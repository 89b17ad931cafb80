"""The architecture page (docs/architecture.md) kept true: layers that import only downward, a docstring in
every package's __init__, and each registry the only list of its kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "sft_exp"
# From the ground up; a module may import its own layer and those below, never one above. (The one-line
# entry points at the top are `python -m sft_exp.<tool>`, kept for the commands the docs and users have.)
LAYERS = [
    {"constants", "paths", "errors", "compat", "atomic", "plain", "system", "schemas"},
    {"data", "loggers", "config"},
    {"models"},
    {"run"},
    {"evaluation", "sweeps"},
    {"training"},
    {"preflight", "cli_errors", "recipe_import"},
    {"tools", "assets", "train"},
    {"__main__", "evaluate", "export", "import_recipe", "preview", "report", "reproduce"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str:
    """The package part a file belongs to: its folder under sft_exp/, or its module name at the root."""
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def _imported_parts(tree: ast.AST):
    """(line, part) of every sft_exp import, lazy ones (inside functions) included."""
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sft_exp":
                names = [alias.name for alias in node.names]
            elif node.module.startswith("sft_exp."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sft_exp.")]
        for name in names:
            yield node.lineno, name


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(path) for path in _sources()} - {"__init__"}
    assert parts <= set(LAYER), f"give these a layer in LAYERS (and docs/architecture.md): {sorted(parts - set(LAYER))}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in _sources():
        own = _part(path)
        if own == "__init__":
            continue
        for line, part in _imported_parts(ast.parse(path.read_text())):
            if part in LAYER and LAYER[part] > LAYER[own]:
                upward.append(f"{path.relative_to(REPO)}:{line} imports sft_exp.{part} ({own} is below it)")
    assert not upward, "imports running back up:\n" + "\n".join(upward)


def test_every_package_says_what_it_holds():
    silent = [
        str(p.relative_to(REPO))
        for p in [*PACKAGE.rglob("__init__.py"), *(REPO / "hydra_plugins").rglob("__init__.py")]
        if "__pycache__" not in p.parts and not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert not silent, f"give each a docstring saying what the package holds: {silent}"


def _registries():
    from sft_exp.data.formats import FORMATS
    from sft_exp.evaluation.tasks import TASK_TYPES
    from sft_exp.tools import TOOLS

    return {
        "data formats": (set(FORMATS), PACKAGE / "data" / "formats.py"),
        "task types": (set(TASK_TYPES), PACKAGE / "evaluation" / "tasks.py"),
        "tools": (set(TOOLS), PACKAGE / "tools" / "__init__.py"),
    }


@pytest.mark.parametrize("kind", ["data formats", "task types", "tools"])
def test_every_registry_is_the_only_list_of_its_kind(kind):
    """A literal list of three or more of a registry's names outside its home is a second list that drifts."""
    names, home = _registries()[kind]
    copies = []
    for path in _sources():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                strings = {
                    item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)
                }
                if len(strings & names) >= 3:
                    copies.append(f"{path.relative_to(REPO)}:{node.lineno}: {sorted(strings & names)}")
    assert not copies, f"read the {kind} from their registry ({home.relative_to(REPO)}) instead:\n" + "\n".join(copies)
