"""AWS Transcribe Call Analytics post-call (batch) output: one call per JSON file, its turns in `Transcript[]`.

Fields follow https://docs.aws.amazon.com/transcribe/latest/dg/tca-output-batch.html. A turn names its speaker's
role (AGENT or CUSTOMER) but no participant id, so the speaker is the role upper-cased. The vendor's turn sentiment
(POSITIVE/NEGATIVE/NEUTRAL/MIXED) is not an emotion label: it is kept as `vendor_sentiment`, the turn `Id` as
`source_id`. A turn that cannot be read fails its whole call, because bios need every turn of a speaker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
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
from bioserc.schema import Conversation


ROLE_NAMES = {
    "AGENT": "agent",
    "CUSTOMER": "customer",
    "SYSTEM": "system",
    "CUSTOM_BOT": "bot",
    "SUPERVISOR": "supervisor",
}

TRANSCRIPT_KEY = re.compile(r'"Transcript"\s*:\s*\[')

SpeakerResolver = Callable[[str, dict[str, Any]], tuple[str, str]]  # (record, turn) -> (speaker, role)


def dig(doc: Any, *keys: str) -> Any:
    """A nested value, or None where any level is missing or not an object (optional vendor sections vary)."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def millis(path: str, record: str, field: str, value: Any) -> int | None:
    """An offset in milliseconds; a non-number is a broken record, never a silent zero."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(path, record, field, f"{value!r} is not a number of milliseconds")
    return int(value)


@register_reader
class AwsTcaReader(BaseReader):
    name = "aws-tca"
    priority = 31
    description = "AWS Transcribe Call Analytics post-call JSON (Transcript[] with ParticipantRole)"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        # Contact Lens shares the layout but names turns by ParticipantId; TCA turns never carry one.
        return (
            head.lstrip().startswith("{")
            and TRANSCRIPT_KEY.search(head) is not None
            and '"ParticipantId"' not in head
            and ('"ParticipantRole"' in head or '"JobStatus"' in head)
        )

    def conversation_id(self, path: str, doc: dict[str, Any]) -> str:
        return str(doc.get("JobName") or conversation_id_from_path(path))

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        conv_id = self.conversation_id(path, doc)
        turns = doc.get("Transcript")
        if not isinstance(turns, list):
            raise RecordError(path, conv_id, "Transcript", "missing or not a list")
        try:
            yield self.conversation(path, conv_id, doc, turns)
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(turns))

    def speaker_resolver(self, path: str, doc: dict[str, Any]) -> SpeakerResolver:
        def resolve(record: str, turn: dict[str, Any]) -> tuple[str, str]:
            vendor = turn.get("ParticipantRole")
            role = ROLE_NAMES.get(vendor) if isinstance(vendor, str) else None
            if role is None:
                raise RecordError(path, record, "ParticipantRole", f"{vendor!r} is not one of {list(ROLE_NAMES)}")
            return role.upper(), role

        return resolve

    def conversation(self, path: str, conv_id: str, doc: dict[str, Any], turns: list[Any]) -> Conversation:
        resolve = self.speaker_resolver(path, doc)
        utterances = []
        for i, turn in enumerate(turns):
            record = f"{conv_id} Transcript[{i}]"
            if not isinstance(turn, dict):
                raise RecordError(path, record, None, "turn is not a JSON object", raw=json.dumps(turn))
            speaker, role = resolve(record, turn)
            meta = {"source_id": turn.get("Id"), "vendor_sentiment": turn.get("Sentiment")}
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    i,
                    speaker,
                    turn.get("Content"),
                    role=role,
                    start_ms=millis(path, record, "BeginOffsetMillis", turn.get("BeginOffsetMillis")),
                    end_ms=millis(path, record, "EndOffsetMillis", turn.get("EndOffsetMillis")),
                    metadata={k: v for k, v in meta.items() if v is not None},
                )
            )
        return self.make_conversation(
            path,
            conv_id,
            utterances,
            language=doc.get("LanguageCode"),
            channel=doc.get("Channel"),
            categories=dig(doc, "Categories", "MatchedCategories") or None,
            vendor_overall_sentiment=dig(doc, "ConversationCharacteristics", "Sentiment", "OverallSentiment"),
        )
