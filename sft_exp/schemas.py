"""A component's structured config, generated from the component's own source: one schema per component.

`component_schema("sft_exp.training.losses.DFTLoss")` is a dataclass with `_target_` and the class's own
fields (a dataclass's fields, or its `__init__` keywords, inherited ones included) with their types and
defaults. Hydra's ConfigStore holds it, so a misspelled key or a wrong type fails when the config is
composed, as hydra-zen's `builds()` and torchtune's signature binding do.

The source is parsed, not imported: composing a config (and `--help`) must not pay for torch and
transformers, which most components import at the top. So a default must be a literal (or
`field(default_factory=list|dict)`), and a type one `typing` understands; anything else is typed Any.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# Names an annotation may use; others (torch.Tensor, a class of ours) make the field Any.
_TYPE_NAMES = {
    "Any": Any, "Optional": Optional, "Union": typing.Union, "List": List, "Dict": Dict, "Tuple": typing.Tuple,
    "Sequence": typing.Sequence, "Mapping": typing.Mapping, "list": list, "dict": dict, "tuple": tuple,
    "int": int, "float": float, "str": str, "bool": bool, "None": None,
}  # fmt: skip
_SCALARS = (int, float, str, bool)


@dataclasses.dataclass
class _Field:
    name: str
    annotation: str | None
    default: Any  # MISSING when required
    nested: str | None = None  # a dataclass of the same module the field holds (a list of), e.g. Source


def component_schema(target: str, *, defaults: Optional[dict] = None, **meta: Any) -> type:
    """The structured config of class `target` (its dotted path). `defaults` replaces field defaults (e.g. an
    interpolation like "${seed}"); `meta` adds Hydra keys (`_partial_=True`, `_convert_="all"`)."""
    module, _, name = target.rpartition(".")
    return _schema(module, name, target, tuple(sorted((defaults or {}).items())), tuple(sorted(meta.items())))


def own_fields(target: str) -> list:
    """`target`'s fields as dataclasses.make_dataclass takes them (name, type, field), without `_target_`:
    to add a component's own fields to a schema that lists a third-party base class's."""
    module, _, name = target.rpartition(".")
    return _dataclass_fields_of(module, name, {})


@functools.cache
def _schema(module: str, name: str, target: str | None, defaults: tuple, meta: tuple) -> type:
    fields = [] if target is None else [("_target_", str, dataclasses.field(default=target))]
    fields += [(f"_{key}_", type(value), dataclasses.field(default=value)) for key, value in meta]
    fields += _dataclass_fields_of(module, name, dict(defaults))
    schema = dataclasses.make_dataclass(_unique_name(f"{name}Schema", (module, name, target, defaults, meta)), fields)
    schema.__doc__ = f"Generated from {module}.{name}: its fields, types and defaults."
    return importable(schema)


# Generated schemas by name. Hydra pickles composed configs (the submitit and SLURM launchers send them to
# the job), and pickle finds a class by its module and name: they are found in sft_exp.config, which
# generates them all when it is imported (its module __getattr__ reads this dict).
GENERATED: dict[str, type] = {}
_KEYS: dict[str, tuple] = {}
REGISTERING_MODULE = "sft_exp.config"


def importable(schema: type) -> type:
    """Register a generated dataclass by name, as an attribute pickle finds in sft_exp.config."""
    schema.__module__ = REGISTERING_MODULE
    schema.__qualname__ = schema.__name__
    GENERATED[schema.__name__] = schema
    return schema


def _unique_name(base: str, key: tuple) -> str:
    name, n = base, 1
    while name in _KEYS and _KEYS[name] != key:
        n += 1
        name = f"{base}{n}"
    _KEYS[name] = key
    return name


def _dataclass_fields_of(module: str, name: str, overrides: dict) -> list:
    fields = []
    for spec in _fields(_classes(_source_file(module)), name, module):
        annotation = _omegaconf_type(spec, module)
        default = overrides.get(spec.name, spec.default)
        if spec.nested is not None and default == {}:  # a dataclass field whose default is its own defaults
            fields.append(
                (spec.name, annotation, dataclasses.field(default_factory=_schema(module, spec.nested, None, (), ())))
            )
        elif isinstance(default, (list, dict)):
            fields.append((spec.name, annotation, dataclasses.field(default_factory=functools.partial(_copy, default))))
        else:
            fields.append((spec.name, annotation, dataclasses.field(default=default)))
    return fields


def _copy(value):
    return [*value] if isinstance(value, list) else {**value}


def _source_file(module: str) -> Path:
    """The file of `module`, found without running it (its parent packages are imported: keep them light)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ImportError(f"cannot find the Python source of {module} to build its config schema")
    return Path(spec.origin)


@functools.cache
def _classes(path: Path) -> dict[str, ast.ClassDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _fields(classes: dict, name: str, module: str) -> list[_Field]:
    """A class's configurable fields, base classes of the same module first (as dataclasses order them)."""
    if name not in classes:
        raise ImportError(f"{module} has no class {name} (from its `_target_`)")
    node = classes[name]
    inherited: dict[str, _Field] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            inherited.update({f.name: f for f in _fields(classes, base.id, module)})
    if _is_dataclass(node):
        own = _dataclass_fields(node, classes)
    else:
        init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"), None)
        if init is None:
            return list(inherited.values())
        own, inherited = _init_fields(init, classes), {}  # an __init__ of its own replaces the base's arguments
    return list({**inherited, **{f.name: f for f in own}}.values())


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(func, ast.Name) and func.id == "dataclass") or (
            isinstance(func, ast.Attribute) and func.attr == "dataclass"
        ):
            return True
    return False


def _dataclass_fields(node: ast.ClassDef, classes: dict) -> list[_Field]:
    fields = []
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        annotation = ast.unparse(item.annotation)
        if annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        nested = _nested(item.annotation, classes)
        own = nested is not None and _factory_name(item.value) == nested  # field(default_factory=Nested): its defaults
        fields.append(_Field(item.target.id, annotation, {} if own else _default(item.value), nested))
    return fields


def _factory_name(node: ast.expr | None) -> str | None:
    """`X` of `field(default_factory=X)`, else None."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "field":
        factory = {k.arg: k.value for k in node.keywords}.get("default_factory")
        return factory.id if isinstance(factory, ast.Name) else None
    return None


def _init_fields(init: ast.FunctionDef, classes: dict) -> list[_Field]:
    args = init.args
    positional = args.posonlyargs + args.args
    padded = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, padded))[1:] + list(zip(args.kwonlyargs, args.kw_defaults))  # [1:]: self
    return [
        _Field(arg.arg, ast.unparse(arg.annotation) if arg.annotation else None,
               _default(value), _nested(arg.annotation, classes))
        for arg, value in pairs
    ]  # fmt: skip


def _default(node: ast.expr | None) -> Any:
    """A default written in the source: a literal, or field(default=...) / field(default_factory=list|dict)."""
    if node is None:
        return MISSING
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "field":
        keywords = {k.arg: k.value for k in node.keywords}
        if "default" in keywords:
            return _default(keywords["default"])
        factory = keywords.get("default_factory")
        if isinstance(factory, ast.Name) and factory.id in ("list", "dict", "tuple"):
            return [] if factory.id != "dict" else {}
        if isinstance(factory, ast.Lambda):
            return _default(factory.body)
        raise ValueError(f"cannot read the default {ast.unparse(node)} (only list/dict factories and literals)")
    value = _constant(node)
    return list(value) if isinstance(value, tuple) else value


def _constant(node: ast.expr) -> Any:
    """A literal, or arithmetic on literals (`1 << 20`); a name or a call is not a default we can read."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        if all(
            isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)) for n in ast.walk(node)
        ):
            return eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}})
        raise ValueError(f"line {node.lineno}: the default {ast.unparse(node)} is not a literal") from None


def _nested(annotation: ast.expr | None, classes: dict) -> str | None:
    """The dataclass of the same module a field holds, itself or as a list: `list[Source]` -> Source."""
    if annotation is None:
        return None
    names = [n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)]
    return next((n for n in names if n in classes and _is_dataclass(classes[n])), None)


def _omegaconf_type(spec: _Field, module: str) -> Any:
    """The field's annotation as a type OmegaConf checks (scalars, Optional, List, Dict); Any otherwise."""
    if spec.nested is not None:
        nested = _schema(module, spec.nested, None, (), ())
        is_list = spec.annotation.replace(" ", "").lower().startswith(("list[", "optional[list[", "sequence["))
        return List[nested] if is_list else Optional[nested]
    if spec.annotation is None:
        return Any
    try:
        hint = eval(spec.annotation, {"__builtins__": {}}, _TYPE_NAMES)
    except Exception:  # a type this module cannot name (Tensor, Callable, ...)
        return Any
    return _plain_type(hint)


def _plain_type(hint: Any) -> Any:
    if hint in _SCALARS or hint is Any:
        return hint
    if hint in (list, tuple) or typing.get_origin(hint) in (list, tuple, typing.Sequence.__origin__):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return List[_plain_type(args[0]) if len(args) == 1 else Any]
    if hint is dict or typing.get_origin(hint) in (dict, typing.Mapping.__origin__):
        args = typing.get_args(hint)
        return Dict[str, _plain_type(args[1]) if len(args) == 2 else Any]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", ())) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _plain_type(rest[0])
            return Any if inner is Any else Optional[inner]
    return Any
