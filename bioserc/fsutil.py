"""Folders written beside their target and renamed into place, so a killed run leaves the old folder or the new one.

Training checkpoints and exports both finish this way; the rename dance lives here once.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def staging_dir(target: str) -> str:
    """A new hidden folder beside `target` (same filesystem, so `replace_dir` is a rename, not a copy)."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}-", dir=parent)


def replace_dir(tmp: str, target: str) -> None:
    """Rename the finished folder `tmp` to `target`, replacing whatever `target` held.

    Only renames touch `target`: it is the old folder or the new one at every instant but the one between the two
    renames. The old folder goes to `<tmp>.old` and is deleted afterwards; one left by a run killed in between is
    cleared first.
    """
    old = f"{tmp.rstrip(os.sep)}.old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(target):
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
