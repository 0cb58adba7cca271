"""Turn what a user typed (a file, a directory, a glob, a list of those) into input files, and read them.

Local paths only: the Beam pipelines expand `gs://` and other remote paths with Beam's own filesystems and hand the
bytes to `BaseReader.read_bytes`.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bioserc.errors import BadRecord
from bioserc.readers.base import (
    BaseReader,
    ReadItem,
    decode_utf8,
    detect_reader_class,
    get_reader_class,
    maybe_gunzip,
)
from bioserc.schema import Conversation


INPUT_SUFFIXES = (".json", ".jsonl", ".csv", ".json.gz", ".jsonl.gz", ".csv.gz")
HEAD_BYTES = 65536


def resolve_inputs(specs: str | Iterable[str]) -> list[str]:
    """Expand files, directories (recursively, known suffixes only) and globs into a sorted, de-duplicated list."""
    if isinstance(specs, str):
        specs = [specs]
    found: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            for root, _dirs, files in os.walk(spec):
                found += [os.path.join(root, f) for f in files if f.endswith(INPUT_SUFFIXES)]
        elif os.path.isfile(spec):
            found.append(spec)
        elif glob.has_magic(spec):
            found += [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
        else:
            raise FileNotFoundError(f"input {spec!r} is not a file, a directory or a glob that matches anything")
    files = sorted(dict.fromkeys(found))
    if not files:
        raise FileNotFoundError(f"no input files found in {list(specs)} (looked for {', '.join(INPUT_SUFFIXES)})")
    return files


def sniff_head(data: bytes) -> str:
    return maybe_gunzip(data)[:HEAD_BYTES].decode("utf-8-sig", errors="replace")


def reader_for(path: str, data: bytes, fmt: str = "auto", **options: Any) -> BaseReader:
    """Pick the reader for one file: the named format, or auto-detection from its name and first bytes."""
    if fmt != "auto":
        return get_reader_class(fmt)(**options)
    cls = detect_reader_class(path, sniff_head(data))
    if cls is None:
        raise ValueError(f"{path}: cannot detect the input format; pass --format (see `bioserc convert --help`)")
    return cls(**options)


def read_items(specs: str | Iterable[str], fmt: str = "auto", **options: Any) -> Iterator[ReadItem]:
    """Yield every conversation and bad record from all inputs, file by file."""
    for path in resolve_inputs(specs):
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            reader = reader_for(path, data, fmt, **options)
        except ValueError as err:
            yield BadRecord(path, "file", None, str(err))
            continue
        yield from reader.read_bytes(path, data)


def read_conversations(specs: str | Iterable[str], fmt: str = "auto", **options: Any) -> list[Conversation]:
    """Strict convenience reader for library users and training: any bad record is an error."""
    report = ReadReport()
    conversations = [c for c in report.track(read_items(specs, fmt, **options))]
    if report.skipped:
        raise ValueError(f"{len(report.skipped)} bad input record(s); first: {report.skipped[0].message}")
    return conversations


@dataclass
class ReadReport:
    """Counts what was read and what was skipped, with reasons: `convert` prints it and exits non-zero on skips."""

    conversations: int = 0
    utterances: int = 0
    skipped: list[BadRecord] = field(default_factory=list)

    def track(self, items: Iterable[ReadItem]) -> Iterator[Conversation]:
        for item in items:
            if isinstance(item, BadRecord):
                self.skipped.append(item)
            else:
                self.conversations += 1
                self.utterances += len(item.utterances)
                yield item

    def summary(self) -> str:
        lines = [f"read {self.conversations} conversations, {self.utterances} utterances; "
                 f"skipped {len(self.skipped)} record(s)"]
        reasons = Counter(b.reason.split(":")[0] for b in self.skipped)
        lines += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
        return "\n".join(lines)


__all__ = ["ReadReport", "decode_utf8", "read_conversations", "read_items", "reader_for", "resolve_inputs"]
