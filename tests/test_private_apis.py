"""The architecture's promise: every private API of a dependency sft_exp relies on is in sft_exp/compat.py.

Outside it, the code may neither read a private attribute of a dependency's object or class nor override
(or call through super()) a private method that compat.PRIVATE_OVERRIDES does not list. tests/test_compat.py
checks each listed one against the installed versions."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import sft_exp
from sft_exp import compat

PACKAGE = Path(sft_exp.__file__).parent
LISTED = {name for names in compat.PRIVATE_OVERRIDES.values() for name in names}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "compat.py":
            yield path, ast.parse(path.read_text())


def _dependency_names(tree: ast.Module) -> set[str]:
    """Names a module binds to another package's modules and classes (import torch, from accelerate import X)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if not a.name.startswith("sft_exp")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and not node.module.startswith("sft_exp")
            and node.level == 0
        ):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_no_private_attribute_of_a_dependency_is_read_outside_compat():
    found = []
    for path, tree in _sources():
        dependencies = _dependency_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = node.value
            via_super = isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super"
            on_dependency = isinstance(owner, ast.Name) and owner.id in dependencies
            if (via_super and node.attr not in LISTED) or on_dependency:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: .{node.attr}")
    assert not found, "private APIs outside sft_exp/compat.py (move them there, or list an override): " + "; ".join(
        found
    )


def _sft_exp_classes():
    for module in pkgutil.walk_packages([str(PACKAGE)], prefix="sft_exp."):
        if module.name.endswith("__main__"):
            continue
        try:
            loaded = importlib.import_module(module.name)
        except ImportError as err:  # an optional engine that is not installed here
            pytest.skip(f"{module.name} needs {err.name}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if cls.__module__ == module.name:
                yield cls


def test_every_overridden_private_method_of_a_dependency_is_listed_in_compat():
    unlisted = []
    for cls in _sft_exp_classes():
        for name in (n for n, v in vars(cls).items() if _private(n) and inspect.isfunction(v)):
            owners = [
                base for base in cls.__mro__[1:] if not base.__module__.startswith("sft_exp") and name in vars(base)
            ]
            if owners and name not in compat.PRIVATE_OVERRIDES.get(_qualified(owners[0]), ()):
                unlisted.append(f"{cls.__module__}.{cls.__qualname__}.{name} overrides {_qualified(owners[0])}.{name}")
    assert not unlisted, "list these in compat.PRIVATE_OVERRIDES: " + "; ".join(unlisted)


def _qualified(cls) -> str:
    return {"transformers.trainer.Trainer": "transformers.Trainer"}.get(
        f"{cls.__module__}.{cls.__qualname__}", f"{cls.__module__}.{cls.__qualname__}"
    )
