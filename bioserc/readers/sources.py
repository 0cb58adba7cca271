"""Turn what a user typed (a file, a directory, a glob, a list of those) into input files, and read them.

Local paths by default: the Beam pipelines open `gs://` and other remote paths with Beam's own filesystems and hand
the file object to `read_path`. Everything that can go wrong with one file ends as a dead letter for that file.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bioserc.errors import FILE_ERRORS, BadRecord, RecordError, file_failure
from bioserc.readers.base import (
    GZIP_MAGIC,
    MAX_FILE_BYTES,
    BaseReader,
    ReadItem,
    decode_utf8,
    detect_reader_class,
    get_reader_class,
    inflate,
    read_limited,
    reader_names,
)
from bioserc.schema import Conversation


INPUT_SUFFIXES = (".json", ".jsonl", ".csv", ".json.gz", ".jsonl.gz", ".csv.gz")
HEAD_BYTES = 65536


def resolve_inputs(specs: str | Iterable[str]) -> list[str]:
    """Expand files, directories (recursively, known suffixes only) and globs into a sorted, de-duplicated list.

    A broken or looping symlink stays in the list, so that reading it gives a dead letter that says why.
    """
    if isinstance(specs, str):
        specs = [specs]
    found: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            for root, _dirs, files in os.walk(spec):
                found += [os.path.join(root, f) for f in files if f.endswith(INPUT_SUFFIXES)]
        elif os.path.isfile(spec) or os.path.islink(spec):
            found.append(spec)
        elif glob.has_magic(spec):
            found += [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) or _dangling(p)]
        else:
            raise FileNotFoundError(f"input {spec!r} is not a file, a directory or a glob that matches anything")
    files = sorted(dict.fromkeys(found))
    if not files:
        raise FileNotFoundError(f"no input files found in {list(specs)} (looked for {', '.join(INPUT_SUFFIXES)})")
    return files


def _dangling(path: str) -> bool:
    """A symlink whose target cannot be reached (broken, or a loop)."""
    return os.path.islink(path) and not os.path.exists(path)


def sniff_head(data: bytes) -> str:
    """The first HEAD_BYTES of the content as text, inflating no more than that when `data` is still gzipped."""
    head = data[:HEAD_BYTES]
    if head.startswith(GZIP_MAGIC):
        head = b""
        try:
            for piece in inflate("", [data], HEAD_BYTES):
                head += piece
                if len(head) >= HEAD_BYTES:
                    break
        except RecordError:
            pass  # corrupt gzip: detection sees what came out; reading the file reports the error
    return head[:HEAD_BYTES].decode("utf-8-sig", errors="replace")


def reader_for(path: str, data: bytes, fmt: str = "auto", **options: Any) -> BaseReader:
    """Pick the reader for one file: the named format, or auto-detection from its name and first bytes."""
    if fmt != "auto":
        return get_reader_class(fmt)(**options)
    cls = detect_reader_class(path, sniff_head(data))
    if cls is None:
        raise RecordError(
            path,
            "file",
            None,
            "unsupported format: no reader recognises this file; supported formats: "
            f"{', '.join(reader_names())} (pass --format NAME to force one)",
        )
    return cls(**options)


def read_path(
    path: str,
    fmt: str = "auto",
    max_bytes: int = MAX_FILE_BYTES,
    opener: Callable[[str], BinaryIO] | None = None,
    **options: Any,
) -> Iterator[ReadItem]:
    """Yield one file's conversations and bad records; a file that cannot be opened, read or parsed is one BadRecord.

    `opener` returns a raw (not decompressing) binary file object; the default is the local `open`. The content is
    read whole but streamed through `read_limited`, so gzip is inflated in pieces and stops at `max_bytes`.
    """
    try:
        with (opener or _open_local)(path) as fh:
            data = read_limited(fh, path, max_bytes)
        reader = reader_for(path, data, fmt, **options)
        yield from reader.read_data(path, data)
    except FILE_ERRORS as err:
        yield file_failure(path, err)


def _open_local(path: str) -> BinaryIO:
    return open(path, "rb")


def read_items(
    specs: str | Iterable[str], fmt: str = "auto", max_bytes: int = MAX_FILE_BYTES, **options: Any
) -> Iterator[ReadItem]:
    """Yield every conversation and bad record from all inputs, file by file."""
    for path in resolve_inputs(specs):
        yield from read_path(path, fmt, max_bytes, **options)


def read_conversations(specs: str | Iterable[str], fmt: str = "auto", **options: Any) -> list[Conversation]:
    """Strict convenience reader for library users and training: any bad record is an error."""
    report = ReadReport()
    conversations = [c for c in report.track(read_items(specs, fmt, **options))]
    if report.skipped:
        raise ValueError(f"{len(report.skipped)} bad input record(s); first: {report.skipped[0].message}")
    return conversations


def reader_options(args: Any) -> dict[str, Any]:
    """The reader options of a command line that used `add_role_args` and --dataset (convert, stats, bios, label)."""
    return {"dataset": args.dataset, "speaker_roles": args.speaker_roles, "channel_roles": args.channel_roles}


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
        lines = [
            f"read {self.conversations} conversations, {self.utterances} utterances; "
            f"skipped {len(self.skipped)} record(s)"
        ]
        reasons = Counter(b.reason.split(":")[0] for b in self.skipped)
        lines += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
        return "\n".join(lines)


__all__ = [
    "ReadReport",
    "decode_utf8",
    "read_conversations",
    "read_items",
    "read_path",
    "reader_for",
    "reader_options",
    "resolve_inputs",
]
