"""Google CCAI Insights conversation ingest JSON: `{"conversation_info": {...}, "entries": [...]}`, one call a file.

Fields follow https://cloud.google.com/contact-center/insights/docs/conversation-data-format. Entries carry a role
and a numeric `user_id`; two users in one role (a transfer) become AGENT and AGENT_2. Timestamps are microseconds
since the epoch, so `start_ms` counts from the earliest entry (the start of the call) and the absolute value is kept
as `start_timestamp_usec`. The file has no call id: the file name is the id. The API's Conversation resource
(`transcript.transcriptSegments`) is a different shape, read by `google-ccai-api`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.readers.base import (
    BaseReader,
    ReadItem,
    conversation_id_from_path,
    decode_utf8,
    load_json,
    register_reader,
)
from bioserc.readers.roles import numbered_speaker
from bioserc.schema import Conversation


ROLE_NAMES = {
    "AGENT": "agent",
    "HUMAN_AGENT": "agent",
    "AUTOMATED_AGENT": "bot",
    "CUSTOMER": "customer",
    "END_USER": "customer",
}

ENTRIES_KEY = re.compile(r'"entries"\s*:\s*\[')


def usec(path: str, record: str, value: Any) -> int | None:
    """Proto3 JSON writes int64 as a string, so both `123` and `"123"` are accepted."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(path, record, "start_timestamp_usec", f"{value!r} is not an integer")
    return value


@register_reader
class GoogleCcaiReader(BaseReader):
    name = "google-ccai"
    priority = 32
    description = "Google CCAI Insights conversation ingest JSON (entries[] with role, user_id, text)"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        if not head.lstrip().startswith("{") or ENTRIES_KEY.search(head) is None:
            return False
        entry_keys = '"role"' in head and ('"user_id"' in head or '"start_timestamp_usec"' in head)
        return '"conversation_info"' in head or entry_keys  # not any JSON with "entries" and an id

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        conv_id = conversation_id_from_path(path)
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise RecordError(path, conv_id, "entries", "missing or not a list")
        try:
            yield self.conversation(path, conv_id, doc, entries)
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(entries))

    def conversation(self, path: str, conv_id: str, doc: dict[str, Any], entries: list[Any]) -> Conversation:
        rows = []
        for i, entry in enumerate(entries):
            record = f"{conv_id} entries[{i}]"
            if not isinstance(entry, dict):
                raise RecordError(path, record, None, "entry is not a JSON object", raw=json.dumps(entry))
            rows.append((record, entry, usec(path, record, entry.get("start_timestamp_usec"))))
        origin = min((t for _, _, t in rows if t is not None), default=0)
        names: dict[tuple[str, str], str] = {}
        utterances = []
        for i, (record, entry, t) in enumerate(rows):
            vendor = entry.get("role")
            role = ROLE_NAMES.get(vendor.upper()) if isinstance(vendor, str) else None
            if role is None:
                raise RecordError(path, record, "role", f"{vendor!r} is not one of {list(ROLE_NAMES)}")
            user = entry.get("user_id")
            meta = {"source_id": i, "user_id": user, "start_timestamp_usec": t}
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    i,
                    numbered_speaker(names, role, str(user)),
                    entry.get("text"),
                    role=role,
                    start_ms=None if t is None else (t - origin) // 1000,
                    metadata={k: v for k, v in meta.items() if v is not None},
                )
            )
        return self.make_conversation(path, conv_id, utterances, categories=category_names(doc))


def category_names(doc: dict[str, Any]) -> list[str] | None:
    info = doc.get("conversation_info")
    categories = info.get("categories") if isinstance(info, dict) else None
    if not isinstance(categories, list):
        return None
    return [c["display_name"] for c in categories if isinstance(c, dict) and c.get("display_name")] or None
