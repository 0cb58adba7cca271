"""The house style is checked where CI runs the tests: `ruff check` (lint) and `ruff format --check` (layout) over the
whole tree, with the settings in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    if found.is_file():
        return str(found)
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install 'bioserc[dev]')")
    return found


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_the_tree_is_ruff_clean(command):
    done = subprocess.run([ruff(), *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
