"""The original MELD (`*_sent_emo.csv`) and EmoryNLP (`emorynlp_*_final.csv`) CSV releases.

Rows are grouped into conversations by dialogue (MELD) or season/episode/scene (EmoryNLP, the same ids as the
BiosERC JSON) and ordered by utterance id. Speakers keep their real names; EmoryNLP lists several speakers for a
shared line, and the first one listed is the speaker (the convention the BiosERC JSON follows).
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
from collections.abc import Iterator
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.labels import get_label_set
from bioserc.readers.base import BaseReader, ReadItem, decode_utf8, register_reader, strip_gz


_TIME = re.compile(r"^(\d+):(\d\d):(\d\d)[,.](\d{1,3})$")


def parse_timestamp_ms(value: str | None) -> int | None:
    """'00:20:57,256' (MELD) or '00:00:03.795' (EmoryNLP) -> milliseconds."""
    m = _TIME.match((value or "").strip())
    if not m:
        return None
    h, mi, s, frac = m.groups()
    return ((int(h) * 60 + int(mi)) * 60 + int(s)) * 1000 + int(frac.ljust(3, "0"))


class CorpusCsvReader(BaseReader):
    """Shared CSV handling: decode, check columns, group rows, turn each group into a conversation."""

    required: tuple[str, ...] = ()
    label_set = ""

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        header = head.splitlines()[0] if head else ""
        return all(col in header for col in cls.required)

    def conversation_key(self, row: dict[str, str]) -> str:
        raise NotImplementedError

    def speaker_of(self, path: str, record: str, row: dict[str, str]) -> tuple[str, dict[str, Any]]:
        return row["Speaker"], {}

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        labels = get_label_set(self.dataset or self.label_set)
        reader = csv.DictReader(io.StringIO(decode_utf8(path, data), newline=""))
        missing = [c for c in self.required if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordError(path, "header", missing[0], f"missing column(s) {missing}; found {reader.fieldnames}")
        groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                yield BadRecord(
                    path, f"line {line}", None, "wrong number of columns", raw=str(row)[:2000], utterances=1
                )
                continue
            groups.setdefault(self.conversation_key(row), []).append((line, row))
        for conv_id, rows in groups.items():
            try:
                yield self.conversation(path, conv_id, rows, labels)
            except RecordError as err:
                yield BadRecord.from_error(err, utterances=len(rows))

    def conversation(self, path: str, conv_id: str, rows: list[tuple[int, dict[str, str]]], labels):
        try:
            rows = sorted(rows, key=lambda lr: int(lr[1]["Utterance_ID"]))
        except ValueError:
            bad = next(line for line, r in rows if not r["Utterance_ID"].strip().isdigit())
            raise RecordError(path, f"{conv_id} (line {bad})", "Utterance_ID", "not an integer") from None
        utterances = []
        for i, (line, row) in enumerate(rows):
            record = f"{conv_id} (line {line})"
            emotion = row["Emotion"].strip()
            try:
                labels.index(emotion)
            except ValueError as err:
                raise RecordError(path, record, "Emotion", str(err)) from None
            speaker, extra = self.speaker_of(path, record, row)
            start, end = self.times(row)
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    i,
                    speaker,
                    row["Utterance"],
                    label=emotion,
                    start_ms=start,
                    end_ms=end,
                    metadata={**extra, **self.row_metadata(row)},
                )
            )
        return self.make_conversation(path, conv_id, utterances, label_set=labels.name, split=_split_of(path))

    def times(self, row: dict[str, str]) -> tuple[int | None, int | None]:
        return None, None

    def row_metadata(self, row: dict[str, str]) -> dict[str, Any]:
        return {}


@register_reader
class MeldCsvReader(CorpusCsvReader):
    name = "meld-csv"
    priority = 20
    description = "original MELD release CSV (train/dev/test_sent_emo.csv)"
    required = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
    label_set = "meld"

    def conversation_key(self, row: dict[str, str]) -> str:
        return row["Dialogue_ID"].strip()

    def times(self, row):
        return parse_timestamp_ms(row.get("StartTime")), parse_timestamp_ms(row.get("EndTime"))

    def row_metadata(self, row):
        return {"sentiment": row.get("Sentiment"), "season": row.get("Season"), "episode": row.get("Episode")}


@register_reader
class EmorynlpCsvReader(CorpusCsvReader):
    name = "emorynlp-csv"
    priority = 21
    description = "original EmoryNLP release CSV (emorynlp_*_final.csv)"
    required = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
    label_set = "emorynlp"

    def conversation_key(self, row: dict[str, str]) -> str:
        return f"{row['Season'].strip()}_{row['Episode'].strip()}_{row['Scene_ID'].strip()}"

    def speaker_of(self, path, record, row):
        raw = row["Speaker"].strip()
        try:
            names = ast.literal_eval(raw) if raw.startswith("[") else [raw]
        except (ValueError, SyntaxError):
            raise RecordError(path, record, "Speaker", f"cannot parse speaker list {raw!r}") from None
        if not names or not all(isinstance(n, str) for n in names):
            raise RecordError(path, record, "Speaker", f"empty or malformed speaker list {raw!r}")
        return names[0], ({"speakers": names} if len(names) > 1 else {})

    def times(self, row):
        return parse_timestamp_ms(row.get("Start_Time")), parse_timestamp_ms(row.get("End_Time"))


def _split_of(path: str) -> str | None:
    base = os.path.basename(strip_gz(path)).lower()
    for token, split in (("train", "train"), ("dev", "valid"), ("valid", "valid"), ("test", "test")):
        if token in base:
            return split
    return None
