"""Where the package's configs and assets live, installed or run from a checkout."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """conf/: shipped inside the wheel as sft_exp/conf, at the repo top in a checkout or editable install."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"sft_exp cannot find its conf/ folder next to {PACKAGE_DIR}; reinstall the package")


def asset_path(relative: str) -> Path:
    """A file or folder in sft_exp/assets (the embedded default's tokenizer and demo data)."""
    path = PACKAGE_DIR / "assets" / relative
    if not path.exists():
        raise FileNotFoundError(
            f"asset '{relative}' is missing from {PACKAGE_DIR / 'assets'}; regenerate it with "
            "`python -m sft_exp.assets.build`"
        )
    return path
