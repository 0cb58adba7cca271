"""The distribution ships every package (pyproject lists them explicitly: the root folders are remapped) and every
shipped classifier (serving_artifacts/NAME/), whose default an installed wheel finds from any directory."""

from __future__ import annotations

import hashlib
import json
import os
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

    code = (
        "import sys, bioserc.readers, bioserc.bios.extract, bioserc.models, bioserc.stats, bioserc.embedded; "
        "print('apache_beam' in sys.modules)"
    )
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
            assert not re.search(
                r"^\s*(from|import)\s+(apache_beam|bioserc\.(training|export|pipelines))\b", path.read_text(), re.M
            ), f"{path}: the core must not import Beam or the three"


def test_the_wheel_carries_every_shipped_model_and_finds_the_default_from_anywhere(tmp_path):
    """Built from a copy of the sources (no build/ left in the clone), unpacked, imported from another directory."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in set(tool["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("bioserc-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    shipped = [d for d in sorted((ROOT / "serving_artifacts").iterdir()) if (d / "manifest.json").is_file()]
    assert "default" in [d.name for d in shipped]
    for folder in shipped:  # every file of every folder with a manifest, not only default/
        prefix = f"bioserc/serving_artifacts/{folder.name}/"
        listed = json.loads((folder / "manifest.json").read_text())["files"]
        assert {prefix + "manifest.json", *(prefix + rel for rel in listed)} <= names, folder.name
    manifest = (ROOT / "serving_artifacts" / "default" / "manifest.json").read_text()
    default = "bioserc/serving_artifacts/default/"

    code = (
        "import bioserc, bioserc.artifacts as a; from bioserc.models.classifier import load_classifier; "
        "d = a.default_model_dir(); print(bioserc.__file__); print(d); print(load_classifier(d).model_id)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("BIOSERC_DEFAULT_MODEL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    ).stdout.split()
    assert out == [
        str(tmp_path / "site" / "bioserc" / "__init__.py"),
        str(tmp_path / "site" / default.rstrip("/")),
        hashlib.sha256(manifest.encode()).hexdigest()[:16],
    ]  # loaded (and verified) from the wheel
