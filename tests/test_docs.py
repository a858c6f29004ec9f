"""The API reference in ``docs/api.md`` names every public name and matches the docstrings."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jaxguides as jg

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_public_name_is_in_the_api_reference():
    page = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in jg.__all__ if f"## `{name}`" not in page]
    assert not missing, f"docs/api.md lacks {missing}: run python docs/gen_api.py"


def test_api_reference_matches_the_docstrings():
    done = subprocess.run([sys.executable, "docs/gen_api.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
