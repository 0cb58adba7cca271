"""JSON Lines: the project's canonical form (one `Conversation.to_json()` a line) and one utterance a line.

Utterance rows are what a warehouse or a streaming export holds: `conversation_id`, `speaker` (or `speaker_id`),
`text`, optional `role` (or `speaker_role`), `turn_idx` (or `index`), `start_ms`, `end_ms`, `label`; other keys go
to the utterance metadata. Rows are grouped by conversation id in order of first appearance and ordered by turn index
where the rows have one. Each line is decoded and parsed on its own, so an unreadable line costs only itself, never
the file; a readable row with a bad field costs its conversation, since bios need every turn. Canonical lines are
taken as written, not re-normalised, so that reading our own output gives back exactly what was written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.readers.base import BaseReader, ReadItem, decode_utf8, load_json, register_reader, strip_gz
from bioserc.schema import ROLES, Conversation, Utterance


ROW_FIELDS = {
    "conversation_id",
    "speaker",
    "speaker_id",
    "text",
    "role",
    "speaker_role",
    "turn_idx",
    "index",
    "start_ms",
    "end_ms",
    "label",
    "metadata",
}


def first_of(row: dict[str, Any], *keys: str) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register_reader
class JsonlReader(BaseReader):
    name = "jsonl"
    priority = 90  # generic: every specific format gets the file first
    description = "JSON Lines: canonical conversations (bioserc convert output) or one utterance per line"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        line = next((ln.strip() for ln in head.splitlines() if ln.strip()), "")
        if not line.startswith("{"):
            return False
        if os.path.basename(strip_gz(path)).lower().endswith(".jsonl"):
            return True
        try:
            obj = json.loads(line)
        except ValueError:  # a first line longer than the head: a canonical conversation starts with its schema
            return line.startswith('{"schema_version"') and '"utterances"' in line
        if not isinstance(obj, dict):
            return False
        return {"id", "utterances"} <= obj.keys() or {"conversation_id", "text"} <= obj.keys()

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        lines: list[tuple[int, dict[str, Any] | RecordError]] = []
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = load_json(path, decode_utf8(path, raw, f"line {n}"), f"line {n}")
                if not isinstance(obj, dict):
                    raise RecordError(path, f"line {n}", None, f"a JSON {type(obj).__name__}, expected an object")
                lines.append((n, obj))
            except RecordError as err:
                lines.append((n, err))
        # an unreadable line held one utterance in a row file; in a canonical file the count is unknown
        lost = 1 if any(isinstance(o, dict) and "utterances" not in o for _, o in lines) else 0
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for n, obj in lines:
            if isinstance(obj, RecordError):
                yield BadRecord.from_error(obj, utterances=lost)
            elif "utterances" in obj:
                record = f"{obj['id']} (line {n})" if obj.get("id") is not None else f"line {n}"
                try:
                    yield self.canonical(path, record, obj)
                except RecordError as err:
                    held = obj["utterances"]
                    yield BadRecord.from_error(err, utterances=len(held) if isinstance(held, list) else 0)
            elif isinstance(obj.get("conversation_id"), str | int) and str(obj["conversation_id"]).strip():
                groups.setdefault(str(obj["conversation_id"]), []).append((n, obj))
            else:
                yield BadRecord(
                    path,
                    f"line {n}",
                    "conversation_id",
                    "missing or empty (and no 'utterances': not a conversation either)",
                    raw=json.dumps(obj)[:2000],
                    utterances=1,
                )
        for conv_id, rows in groups.items():
            try:
                yield self.from_rows(path, conv_id, rows)
            except RecordError as err:
                yield BadRecord.from_error(err, utterances=len(rows))

    def canonical(self, path: str, record: str, obj: dict[str, Any]) -> Conversation:
        """Check what downstream stages rely on, then take the conversation as written."""
        if not isinstance(obj.get("id"), str | int) or not str(obj["id"]).strip():
            raise RecordError(path, record, "id", "missing or empty conversation id")
        utterances = obj["utterances"]
        if not isinstance(utterances, list) or not utterances:
            raise RecordError(path, record, "utterances", "empty conversation (no utterances)")
        for j, utt in enumerate(utterances):
            if not isinstance(utt, dict) or not isinstance(utt.get("text"), str):
                raise RecordError(path, record, "text", f"utterance {j} has no text")
            if not isinstance(utt.get("speaker"), str) or not utt["speaker"].strip():
                raise RecordError(path, record, "speaker", f"utterance {j} has no speaker")
            if utt.get("role") not in (None, *ROLES):
                raise RecordError(path, record, "role", f"utterance {j} role {utt['role']!r} is not one of {ROLES}")
        try:
            return Conversation.from_dict(obj)
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(path, record, None, f"not a valid conversation: {err}") from None

    def from_rows(self, path: str, conv_id: str, rows: list[tuple[int, dict[str, Any]]]) -> Conversation:
        turns = [first_of(row, "turn_idx", "index") for _, row in rows]
        if any(t is not None for t in turns):
            for (n, _), turn in zip(rows, turns, strict=True):
                if not is_int(turn):
                    raise RecordError(
                        path,
                        f"{conv_id} (line {n})",
                        "turn_idx",
                        f"{turn!r} is not an integer (other rows of this conversation have one)",
                    )
            if len(set(turns)) != len(turns):
                raise RecordError(path, conv_id, "turn_idx", "the same turn index appears on more than one line")
            rows = [r for _, r in sorted(zip(turns, rows, strict=True), key=lambda p: p[0])]
        return self.make_conversation(
            path, conv_id, [self.row_utterance(path, conv_id, i, n, row) for i, (n, row) in enumerate(rows)]
        )

    def row_utterance(self, path: str, conv_id: str, i: int, n: int, row: dict[str, Any]) -> Utterance:
        record = f"{conv_id} (line {n})"
        role = first_of(row, "role", "speaker_role")
        role = role.lower() if isinstance(role, str) else role
        if role not in (None, *ROLES):
            raise RecordError(path, record, "role", f"{role!r} is not one of {ROLES}")
        times = {}
        for key in ("start_ms", "end_ms"):
            if row.get(key) is not None and not is_int(row[key]):
                raise RecordError(path, record, key, f"{row[key]!r} is not an integer")
            times[key] = row.get(key)
        if row.get("label") is not None and not isinstance(row["label"], str):
            raise RecordError(path, record, "label", f"{row['label']!r} is not a string")
        if not isinstance(row.get("metadata") or {}, dict):
            raise RecordError(path, record, "metadata", "not a JSON object")
        meta = dict(row.get("metadata") or {})
        meta.update({k: v for k, v in row.items() if k not in ROW_FIELDS})
        if first_of(row, "turn_idx", "index") is not None:
            meta["source_id"] = first_of(row, "turn_idx", "index")
        speaker = first_of(row, "speaker", "speaker_id")
        if speaker is None and role is not None:
            speaker = role.upper()  # a source that records only roles, like the vendor readers
        return self.make_utterance(
            path, record, i, speaker, row.get("text"), role=role, label=row.get("label"), metadata=meta, **times
        )
