"""`python -m sft_exp.import_recipe RECIPE.yaml [--accelerate-config FILE] [-o conf/experiment/NAME.yaml]
[--allow-unmapped]`: a TRL or open-r1 recipe -> a Hydra experiment that trains what TRL would, the command that
runs it, and one table of where every field went. Torch and transformers never load (about a second)."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from sft_exp.errors import UserError
from sft_exp.recipe_import.accelerate_config import convert_accelerate, launch_prefix
from sft_exp.recipe_import.convert import convert
from sft_exp.recipe_import.experiment import Conflict, experiment_text
from sft_exp.recipe_import.read import RecipeError, load_mapping, recipe_kind
from sft_exp.recipe_import.rows import Recipe, Row
from sft_exp.recipe_import.table import table_lines

MARKER = "# Imported by `python -m sft_exp.import_recipe`"


@dataclass
class Imported:
    rows: list[Row]
    skipped: list[tuple[str, str]]
    text: str  # the experiment file
    path: Path
    command: str
    kind: str
    recipe: Path


def experiment_name(path: Path) -> str:
    """The recipe file's name, as a Hydra option name (letters, digits, `_`, `-`, `.`)."""
    return re.sub(r"[^\w.-]", "_", path.stem)


def output_path(recipe: Path, output: str | None) -> Path:
    path = Path(output) if output else Path("conf") / "experiment" / f"{experiment_name(recipe)}.yaml"
    if path.suffix != ".yaml" or path.parent.name != "experiment":
        raise RecipeError(
            f"-o {output}: write the experiment as <config dir>/experiment/<name>.yaml, so that "
            "`--config-dir <config dir> experiment=<name>` finds it"
        )
    return path.resolve()


def import_recipe(
    recipe_path: Path, accelerate: Path | None = None, output: str | None = None, allow_unmapped: bool = False
) -> Imported:
    """Read, convert and check a recipe (and an accelerate config); nothing is written."""
    data, lines = load_mapping(recipe_path, "recipe")
    kind = recipe_kind(data, recipe_path)
    recipe = Recipe(data, kind, recipe_path)
    rows, skipped = convert(recipe)
    launch = None
    if accelerate is not None:
        config, accelerate_lines = load_mapping(accelerate, "accelerate config")
        extra, missing, launch = convert_accelerate(config, recipe, accelerate)
        rows, skipped = rows + extra, skipped + missing
        lines.update({f"{accelerate.name}: {k}": v for k, v in accelerate_lines.items()})
    if skipped and not allow_unmapped:
        name, why = skipped[0]
        where = accelerate if name.startswith(f"{getattr(accelerate, 'name', None)}: ") else recipe_path
        key = name if name in lines else name.rsplit(".", 1)[0]  # a field inside deepspeed_config: that block's line
        line = f", line {lines[key]}" if key in lines else ""
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise RecipeError(
            f"{where}{line}: {why}{more}; nothing was written. --allow-unmapped lists and skips such fields"
        )
    path = output_path(recipe_path, output)
    command = f"{launch_prefix(launch)} -m sft_exp --config-dir {path.parent.parent} experiment={path.stem}"
    header = [
        f"{MARKER} from {recipe_path.name}" + (f" and {accelerate.name}" if accelerate else "") + f" ({kind}).",
        f"# Run: {command}",
        "# Each value names the recipe field it came from; `(TRL default)` fields are TRL's defaults, written out",
        "# where the recipe is silent, so this trains what `trl sft` would.",
    ]
    if skipped:
        header.append("# Skipped (--allow-unmapped): " + ", ".join(name for name, _ in skipped))
    try:
        text = experiment_text(rows, header)
    except Conflict as err:
        raise RecipeError(f"{recipe_path}: {err}; make the recipe say one thing") from None
    return Imported(rows, skipped, text, path, command, kind, recipe_path)


def write(imported: Imported) -> None:
    """Write the experiment file (replacing one an earlier import wrote, never a file of yours), then check that
    it composes with sft_exp's config."""
    from sft_exp.recipe_import.check import check_composes, refuse_shadowed

    path = imported.path
    refuse_shadowed(path)
    if path.exists() and MARKER not in path.read_text():
        raise RecipeError(f"{path} exists and was not written by an import; move it, or choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text() if path.exists() else None
    path.write_text(imported.text)
    try:
        check_composes(path, imported.rows, imported.recipe)
    except UserError:
        if previous is None:
            path.unlink()
        else:
            path.write_text(previous)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.import_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="a TRL CLI config (trl sft --config) or an open-r1 SFT recipe")
    parser.add_argument("--accelerate-config", type=Path, help="the accelerate config the recipe was launched with")
    parser.add_argument("-o", "--output", help="the experiment file (default: ./conf/experiment/<recipe name>.yaml)")
    parser.add_argument("--allow-unmapped", action="store_true", help="list and skip fields with no sft_exp form")
    args = parser.parse_args(argv)
    try:
        imported = import_recipe(args.recipe, args.accelerate_config, args.output, args.allow_unmapped)
        write(imported)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    where = imported.path.relative_to(Path.cwd()) if imported.path.is_relative_to(Path.cwd()) else imported.path
    differ = sum(bool(row.note) for row in imported.rows)
    print(
        f"{args.recipe} ({imported.kind}) -> {where}: {len(imported.rows)} fields, {differ} marked * where "
        f"sft_exp's meaning differs" + (f", {len(imported.skipped)} SKIPPED" if imported.skipped else "")
    )
    print()
    print("\n".join(table_lines(imported.rows, imported.skipped)))
    print()
    print(f"Run it with:\n  {imported.command}")
    return 0
