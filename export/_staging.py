"""Exports are written into a hidden sibling folder and renamed into place, so a failed export leaves nothing."""

from __future__ import annotations

import os
import shutil
import tempfile

from bioserc.artifacts import MANIFEST


def check_target(out_dir: str) -> None:
    """Refuse, before any work, to overwrite a folder that is neither empty nor an earlier bioserc artifact."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise FileExistsError(f"{out_dir!r} exists and is not a bioserc artifact; choose an empty or new folder")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir!r} is a file, not a folder")


def staging_dir(out_dir: str) -> str:
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}-", dir=parent)


def replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished export to `out_dir`, replacing an empty folder or an earlier artifact only."""
    check_target(out_dir)
    if os.path.isdir(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)
