"""Exports are written into a hidden sibling folder (`bioserc.fsutil.staging_dir`) and renamed into place, so a
failed export leaves nothing; what they may replace is decided here."""

from __future__ import annotations

import os

from bioserc.artifacts import MANIFEST
from bioserc.fsutil import replace_dir


def check_target(out_dir: str) -> None:
    """Refuse, before any work, to overwrite a folder that is neither empty nor an earlier bioserc artifact."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise FileExistsError(f"{out_dir!r} exists and is not a bioserc artifact; choose an empty or new folder")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir!r} is a file, not a folder")


def publish(tmp: str, out_dir: str) -> None:
    """Move the finished export to `out_dir`, checked again: the folder may have appeared during a long export."""
    check_target(out_dir)
    replace_dir(tmp, out_dir)
