"""Azure Speech results: batch transcription (`recognizedPhrases[]`) and fast transcription (`phrases[]`).

Azure gives no roles, only a channel (a stereo call recording has one side per channel) and, with diarization, a
speaker number. `role_map` (`--role-map 0=agent,1=customer`) maps the speaker number where a phrase has one, else its
channel number (0 when absent), to a role. Which side is the agent depends on how the recorder wired the channels, so
nothing is guessed: unmapped phrases keep role None and the speaker is SPEAKER_<n> (diarized) or CHANNEL_<n>; mapped
ones are named by role (AGENT, AGENT_2 for a second id mapped to agent). Phrases are sorted by offset, since results
are not guaranteed to be in time order; `source_id` keeps each phrase's position in the file. A phrase whose
recognitionStatus is not Success (NoMatch, InitialSilenceTimeout, ...) has no text: it becomes a BadRecord of its own
so the skip is counted, and the rest of the call is kept.
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
from bioserc.readers.contact_lens import numbered_speaker
from bioserc.schema import Conversation


BATCH_KEY = re.compile(r'"recognizedPhrases"\s*:\s*\[')
FAST_KEY = re.compile(r'"phrases"\s*:\s*\[')

TICKS_PER_MS = 10_000  # batch offsets and durations are in 100 ns ticks


def offset_ms(path: str, record: str, phrase: dict[str, Any], name: str) -> int | None:
    """`<name>Milliseconds` where present, else `<name>InTicks` converted to milliseconds."""
    for field, scale in ((f"{name}Milliseconds", 1), (f"{name}InTicks", TICKS_PER_MS)):
        value = phrase.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(path, record, field, f"{value!r} is not a number")
        return int(value // scale)
    return None


@register_reader
class AzureSttReader(BaseReader):
    name = "azure-stt"
    priority = 33
    description = "Azure Speech batch (recognizedPhrases[]) or fast (phrases[]) transcription JSON; see --role-map"

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        if not head.lstrip().startswith("{"):
            return False
        fast = FAST_KEY.search(head) is not None and ('"combinedPhrases"' in head or '"offsetMilliseconds"' in head)
        return fast or BATCH_KEY.search(head) is not None

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        conv_id = conversation_id_from_path(path)
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        key = "recognizedPhrases" if "recognizedPhrases" in doc else "phrases"
        phrases = doc.get(key)
        if not isinstance(phrases, list):
            raise RecordError(path, conv_id, key, "missing or not a list")
        recognized = []
        for i, phrase in enumerate(phrases):
            record = f"{conv_id} {key}[{i}]"
            status = phrase.get("recognitionStatus", "Success") if isinstance(phrase, dict) else "Success"
            if status == "Success":
                recognized.append((i, record, phrase))
            else:
                yield BadRecord(path, record, "recognitionStatus", f"recognitionStatus is {status!r}, not 'Success'",
                                raw=json.dumps(phrase)[:2000], utterances=1)
        try:
            yield self.conversation(path, conv_id, doc, recognized, fast=key == "phrases")
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(recognized))

    def conversation(self, path: str, conv_id: str, doc: dict[str, Any], recognized: list[Any],
                     fast: bool) -> Conversation:
        timed = []
        for i, record, phrase in recognized:
            if not isinstance(phrase, dict):
                raise RecordError(path, record, None, "phrase is not a JSON object", raw=json.dumps(phrase))
            start = offset_ms(path, record, phrase, "offset")
            if start is None:
                raise RecordError(path, record, "offsetMilliseconds", "phrase has no offsetMilliseconds/offsetInTicks")
            timed.append((start, i, record, phrase))
        timed.sort(key=lambda t: t[0])
        names: dict[tuple[str, str], str] = {}
        utterances = []
        for index, (start, i, record, phrase) in enumerate(timed):
            speaker_id, channel = phrase.get("speaker"), phrase.get("channel")
            key, fallback = (speaker_id, "SPEAKER") if speaker_id is not None else (channel or 0, "CHANNEL")
            role = self.role_map.get(str(key))
            speaker = numbered_speaker(names, role, str(key)) if role else f"{fallback}_{key}"
            text, confidence = self.text_of(path, record, phrase, fast)
            duration = offset_ms(path, record, phrase, "duration")
            meta = {"source_id": i, "channel": channel, "speaker_id": speaker_id, "confidence": confidence}
            utterances.append(self.make_utterance(
                path, record, index, speaker, text, role=role, start_ms=start,
                end_ms=None if duration is None else start + duration,
                metadata={k: v for k, v in meta.items() if v is not None},
            ))
        return self.make_conversation(path, conv_id, utterances, source=doc.get("source"))

    def text_of(self, path: str, record: str, phrase: dict[str, Any], fast: bool) -> tuple[Any, Any]:
        """Fast results put the text on the phrase; batch results in the top `nBest` hypothesis."""
        if fast:
            return phrase.get("text"), phrase.get("confidence")
        hypotheses = phrase.get("nBest")
        if not isinstance(hypotheses, list) or not hypotheses or not isinstance(hypotheses[0], dict):
            raise RecordError(path, record, "nBest", "missing or empty (no recognised text)")
        return hypotheses[0].get("display"), hypotheses[0].get("confidence")
