"""A plain CSV of call utterances, one row per utterance: what a warehouse export or a spreadsheet holds.

Header (case, spaces and hyphens ignored): `conversation_id`, `speaker`, `text`, optionally `start`/`end` (seconds)
or `start_ms`/`end_ms` (milliseconds, preferred where both are filled) and `role`; other columns go to the
utterance metadata. Rows are grouped by conversation id in order of first appearance and keep their file order. The
role comes from the `role` cell, else from `speaker_roles` by the speaker cell. A row with the wrong number of cells
costs only itself; a readable row with a bad field costs its conversation, since bios need every turn. Quoted cells
may hold commas and newlines. The research-corpus CSVs (MELD, EmoryNLP) have other headers (`Utterance`,
`Dialogue_ID`, ...) and are read by `meld-csv` / `emorynlp-csv`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.readers.base import BaseReader, ReadItem, decode_utf8, register_reader
from bioserc.schema import ROLES, Conversation


REQUIRED = ("conversation_id", "speaker", "text")
KNOWN = {*REQUIRED, "role", "start", "end", "start_ms", "end_ms"}


def column_name(cell: str) -> str:
    return re.sub(r"[\s-]+", "_", cell.strip().lower())


def header_of(line: str) -> list[str]:
    try:
        return [column_name(c) for c in next(csv.reader([line]), [])]
    except csv.Error:
        return []


def time_ms(path: str, record: str, field: str, cell: str, per_unit: int) -> int | None:
    """A time cell in seconds (per_unit 1000) or milliseconds (1); empty is unknown, anything else must parse."""
    if not cell.strip():
        return None
    try:
        value = float(cell) if per_unit != 1 else int(cell)
        ms = round(value * per_unit)
    except (ValueError, OverflowError):
        unit = "seconds" if per_unit != 1 else "an integer number of milliseconds"
        raise RecordError(path, record, field, f"{cell!r} is not {unit}") from None
    if ms < 0:
        raise RecordError(path, record, field, f"{cell!r} is negative")
    return ms


@register_reader
class CallsCsvReader(BaseReader):
    name = "calls-csv"
    priority = 22
    description = "CSV of call utterances: conversation_id, speaker, text[, start, end | start_ms, end_ms][, role]"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        lines = head.lstrip("\ufeff").splitlines()
        return bool(lines) and set(REQUIRED) <= set(header_of(lines[0]))

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        rows = csv.reader(io.StringIO(decode_utf8(path, data), newline=""))
        header = [column_name(c) for c in next(rows, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise RecordError(path, "header", missing[0], f"missing column(s) {missing}; found {header}")
        groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
        while True:
            line = rows.line_num + 1  # where this row starts: a quoted cell may span lines
            try:
                cells = next(rows)
            except StopIteration:
                break
            except csv.Error as err:
                yield BadRecord(path, f"line {line}", None, f"unreadable CSV row: {err}", utterances=1)
                continue
            if not cells:
                continue
            if len(cells) != len(header):
                yield BadRecord(
                    path,
                    f"line {line}",
                    None,
                    f"wrong number of columns: {len(cells)} cells, the header has {len(header)}",
                    raw=",".join(cells)[:2000],
                    utterances=1,
                )
                continue
            row = dict(zip(header, cells, strict=True))
            conv_id = row["conversation_id"].strip()
            if not conv_id:
                yield BadRecord(
                    path,
                    f"line {line}",
                    "conversation_id",
                    "empty conversation id",
                    raw=",".join(cells)[:2000],
                    utterances=1,
                )
                continue
            groups.setdefault(conv_id, []).append((line, row))
        for conv_id, group in groups.items():
            try:
                yield self.conversation(path, conv_id, group)
            except RecordError as err:
                yield BadRecord.from_error(err, utterances=len(group))

    def conversation(self, path: str, conv_id: str, rows: list[tuple[int, dict[str, str]]]) -> Conversation:
        utterances = []
        for i, (line, row) in enumerate(rows):
            record = f"{conv_id} (line {line})"
            speaker = row["speaker"].strip()
            role = row.get("role", "").strip().lower() or self.speaker_roles.get(speaker)
            if role is not None and role not in ROLES:
                raise RecordError(path, record, "role", f"{row['role']!r} is not one of {list(ROLES)}")
            extra: dict[str, Any] = {k: v for k, v in row.items() if k not in KNOWN and v != ""}
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    i,
                    speaker,
                    row["text"],
                    role=role,
                    start_ms=self.time_of(path, record, row, "start"),
                    end_ms=self.time_of(path, record, row, "end"),
                    metadata=extra,
                )
            )
        return self.make_conversation(path, conv_id, utterances)

    @staticmethod
    def time_of(path: str, record: str, row: dict[str, str], name: str) -> int | None:
        if row.get(f"{name}_ms", "").strip():
            return time_ms(path, record, f"{name}_ms", row[f"{name}_ms"], 1)
        return time_ms(path, record, name, row.get(name, ""), 1000)
