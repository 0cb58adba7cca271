"""Errors that name the file, the record and the field, so a user can find the bad input."""

from __future__ import annotations

import errno
import zlib
from dataclasses import dataclass
from typing import Any


RAW_LIMIT = 2000  # characters of the raw record kept in a dead-letter entry

# What can go wrong with one input file as a whole; each becomes one dead letter, never a traceback that ends the run.
FILE_ERRORS = (OSError, EOFError, zlib.error, MemoryError, RecursionError, ValueError)


class RecordError(ValueError):
    """One record of one input file is unusable. Readers turn it into a `BadRecord` and carry on."""

    def __init__(self, path: str, record: str, field: str | None, reason: str, raw: str | None = None):
        self.path, self.record, self.field, self.reason, self.raw = path, record, field, reason, raw
        super().__init__(format_location(path, record, field, reason))


def format_location(path: str, record: str, field: str | None, reason: str) -> str:
    where = f"{path}: record {record}"
    if field:
        where += f", field {field!r}"
    return f"{where}: {reason}"


@dataclass(slots=True)
class BadRecord:
    """A skipped input record: what the `convert` report counts and what pipelines write to the dead-letter output."""

    path: str
    record: str
    field: str | None
    reason: str
    raw: str | None = None
    utterances: int = 0  # how many input utterances this record held (0 when unknown), for exactly-once accounting

    @classmethod
    def from_error(cls, err: RecordError, utterances: int = 0) -> BadRecord:
        raw = err.raw[:RAW_LIMIT] if err.raw else err.raw
        return cls(err.path, err.record, err.field, err.reason, raw, utterances)

    @property
    def message(self) -> str:
        return format_location(self.path, self.record, self.field, self.reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "record": self.record,
            "field": self.field,
            "reason": self.reason,
            "utterances": self.utterances,
            "raw": self.raw,
        }


def file_failure(path: str, err: BaseException) -> BadRecord:
    """One dead letter for a file that could not be opened, read or parsed at all (one of FILE_ERRORS)."""
    if isinstance(err, RecordError):
        return BadRecord.from_error(err)
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        reason = f"symlink loop: cannot open the file ({err.strerror})"
    elif isinstance(err, OSError):
        reason = f"cannot open or read the file: {err.strerror or err}"
    elif isinstance(err, EOFError | zlib.error):
        reason = f"corrupt gzip data: {err}"
    elif isinstance(err, MemoryError):
        reason = "out of memory while reading the file (lower --max-file-mb or split the file)"
    elif isinstance(err, RecursionError):
        reason = f"nesting too deep: {err}"
    else:
        reason = str(err)
    return BadRecord(path, "file", None, reason)
