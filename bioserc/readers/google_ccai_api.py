"""Google CCAI Insights API conversation export: the Conversation resource, turns in `transcript.transcriptSegments`.

Fields follow the v1 REST reference (Conversation.Transcript.TranscriptSegment): `text`, `confidence`, `words[]` with
`startOffset`/`endOffset` as proto Duration strings ("1.500s"), `channelTag`, `segmentParticipant{role,
dialogflowParticipantName, userId}`, `sentiment{score, magnitude}`. Participant roles map END_USER -> customer,
HUMAN_AGENT -> agent, AUTOMATED_AGENT -> bot; a segment without one of those (ANY_AGENT, ROLE_UNSPECIFIED, none) takes
its role from `channel_roles` by `channelTag` (1, 2), or stays None as CHANNEL_<tag>. Times are the first word's
start and the last word's end (a chat has no words, so no times). The id is the last segment of the resource `name`
(projects/.../conversations/<id>), else the file name. A segment with empty text is not speech: it is skipped and
counted in the conversation's `skipped_segments`. The ingest format (`entries[]`) is read by `google-ccai`.
"""

from __future__ import annotations

import re
from collections import Counter
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
    speech_segments,
)
from bioserc.readers.roles import mapped_speaker, numbered_speaker
from bioserc.schema import Conversation, Utterance


ROLE_NAMES = {"HUMAN_AGENT": "agent", "AUTOMATED_AGENT": "bot", "END_USER": "customer"}
SEGMENTS_KEY = re.compile(r'"transcriptSegments"\s*:\s*\[')
DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def duration_ms(path: str, record: str, field: str, value: Any) -> int | None:
    """A proto3 JSON Duration ("1.500s") in milliseconds."""
    if value is None:
        return None
    match = DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise RecordError(path, record, field, f"{value!r} is not a duration like '1.500s'")
    return round(float(match.group(1)) * 1000)


@register_reader
class GoogleCcaiApiReader(BaseReader):
    name = "google-ccai-api"
    priority = 35
    description = (
        "Google CCAI Insights API conversation export (transcript.transcriptSegments[]); "
        "--channel-roles maps channelTag for segments without a participant role"
    )

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        return head.lstrip().startswith("{") and SEGMENTS_KEY.search(head) is not None

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        name = doc.get("name")
        conv_id = (
            name.rstrip("/").rsplit("/", 1)[-1]
            if isinstance(name, str) and name.strip("/ ")
            else conversation_id_from_path(path)
        )
        transcript = doc.get("transcript")
        segments = transcript.get("transcriptSegments") if isinstance(transcript, dict) else None
        if not isinstance(segments, list):
            raise RecordError(path, conv_id, "transcript.transcriptSegments", "missing or not a list")
        try:
            yield self.conversation(path, conv_id, doc, segments)
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(segments))

    def conversation(self, path: str, conv_id: str, doc: dict[str, Any], segments: list[Any]) -> Conversation:
        names: dict[tuple[str, str], str] = {}
        utterances: list[Utterance] = []
        skipped: Counter = Counter()
        for i, record, seg, text in speech_segments(path, conv_id, "transcriptSegments", segments, "text", skipped):
            speaker, role = self.speaker_of(path, record, names, seg)
            words = seg.get("words") or [{}]  # a chat segment has no words, hence no times
            if not isinstance(words, list) or not all(isinstance(w, dict) for w in words):
                raise RecordError(path, record, "words", "not a list of objects")
            sentiment = seg.get("sentiment")
            meta = {
                "source_id": i,
                "channel_tag": seg.get("channelTag"),
                "confidence": seg.get("confidence"),
                "message_time": seg.get("messageTime"),
                "vendor_sentiment": sentiment.get("score") if isinstance(sentiment, dict) else None,
            }
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    len(utterances),
                    speaker,
                    text,
                    role=role,
                    start_ms=duration_ms(path, record, "words[0].startOffset", words[0].get("startOffset")),
                    end_ms=duration_ms(path, record, "words[-1].endOffset", words[-1].get("endOffset")),
                    metadata={k: v for k, v in meta.items() if v is not None},
                )
            )
        return self.make_conversation(
            path, conv_id, utterances, language=doc.get("languageCode"), skipped_segments=dict(skipped) or None
        )

    def speaker_of(
        self, path: str, record: str, names: dict[tuple[str, str], str], seg: dict[str, Any]
    ) -> tuple[str, str | None]:
        """The participant's role where CCAI names one, else the user's role for the channel."""
        participant = seg.get("segmentParticipant")
        participant = participant if isinstance(participant, dict) else {}
        tag = seg.get("channelTag")
        role = ROLE_NAMES.get(participant.get("role"))
        if role is not None:
            who = participant.get("dialogflowParticipantName") or participant.get("userId") or f"CHANNEL_{tag}"
            return numbered_speaker(names, role, str(who)), role
        if tag is None:
            raise RecordError(
                path,
                record,
                "channelTag",
                f"participant role {participant.get('role')!r} is not one "
                f"of {list(ROLE_NAMES)} and there is no channelTag to map with --channel-roles",
            )
        return mapped_speaker(names, self.channel_roles, str(tag), f"CHANNEL_{tag}")
