"""Small JSONL helpers: gzip by suffix, and atomic writes so a killed run never leaves a half-written output."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any


def open_text(path: str, mode: str = "rt") -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


@contextmanager
def atomic_text_writer(path: str) -> Iterator[IO[str]]:
    """Write to a temporary file beside `path`, then rename over it: readers see the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        with open_text(tmp, "wt") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_text_writer(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open_text(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
