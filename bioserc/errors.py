"""Errors that name the file, the record and the field, so a user can find the bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


RAW_LIMIT = 2000  # characters of the raw record kept in a dead-letter entry


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
