"""The docs build into a site with no warning (a broken link or anchor, a page left out of the nav), and its
start page renders in a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.docs.commands import REPO

QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs site needs mkdocs: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=QUIET,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_every_docs_page_is_in_the_site(site):
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    built = {p.parent.name for p in site.glob("*/index.html")} | {"index"}
    assert pages <= built, f"pages not in the site (add them to mkdocs.yml's nav): {sorted(pages - built)}"


def test_the_start_page_renders_in_headless_chromium(site, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (site / "index.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert "How it is built" in dom.stdout and "Models and configuration" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "start.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,900", page], capture_output=True, timeout=120)
    assert _distinct_colours(shot.read_bytes()) > 8, "the screenshot of the start page is blank"


def _distinct_colours(png: bytes) -> int:
    """How many colours a PNG holds: a blank or failed render has one or two."""
    import io

    from PIL import Image

    return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 20) or [])
