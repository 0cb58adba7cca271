"""The distribution ships every package: pyproject lists packages explicitly (the root folders are remapped)."""

from __future__ import annotations

import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(tool["packages"]), tool["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed


def test_core_imports_no_beam():
    import subprocess
    import sys

    code = ("import sys, bioserc.readers, bioserc.bios.extract, bioserc.models, bioserc.stats, bioserc.embedded; "
            "print('apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_training_export_pipelines_never_import_each_other():
    """They meet only in the core and in artifact manifests (DEVELOPERS.md)."""
    import re

    for folder in ("training", "export", "pipelines"):
        others = [o for o in ("training", "export", "pipelines") if o != folder]
        pattern = re.compile(r"^\s*(from|import)\s+bioserc\.(" + "|".join(others) + r")\b", re.M)
        for path in (ROOT / folder).rglob("*.py"):
            assert not pattern.search(path.read_text()), f"{path} imports another of training/export/pipelines"
    core = ROOT / "bioserc"
    for path in core.rglob("*.py"):
        if path.name != "cli.py":
            assert not re.search(r"^\s*(from|import)\s+(apache_beam|bioserc\.(training|export|pipelines))\b",
                                 path.read_text(), re.M), f"{path}: the core must not import Beam or the three"
