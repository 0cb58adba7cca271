"""Azure Speech results: batch transcription (`recognizedPhrases[]`) and fast transcription (`phrases[]`).

Azure gives no roles, only a channel (a stereo call recording has one side per channel, 0 and 1) and, with
diarization, a speaker number (1, 2, ...). A diarized phrase is identified by its speaker, mapped with
`speaker_roles` (`--speaker-roles 1=agent,2=customer`); its channel (0 on mono audio) says nothing about who spoke.
Any other phrase is identified by its channel, mapped with `channel_roles` (`--channel-roles 0=agent,1=customer`).
Which side is the agent depends on how the recorder wired the channels, so nothing is guessed: unmapped phrases keep
role None and the speaker is SPEAKER_<n> or CHANNEL_<n>; mapped ones are named by role (AGENT, AGENT_2 for a second
id mapped to agent). Phrases are sorted by offset, since results are not guaranteed to be in time order;
`source_id` keeps each phrase's position in the file. A phrase in which nothing was recognised (NoMatch,
InitialSilenceTimeout, BabbleTimeout: silence or noise) is not lost speech: it is skipped and counted in the
conversation's `skipped_segments`. Any other status that is not Success (Error) lost a phrase: it becomes a BadRecord
of its own, and the rest of the call is kept.
"""

from __future__ import annotations

import json
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
)
from bioserc.readers.roles import mapped_speaker
from bioserc.schema import Conversation


# The combined (whole-call) transcript comes first and can fill the detection head, so its key counts as well.
BATCH_KEY = re.compile(r'"(?:combinedRecognizedPhrases|recognizedPhrases)"\s*:\s*\[')
FAST_KEY = re.compile(r'"phrases"\s*:\s*\[')
COMBINED_KEY = re.compile(r'"combinedPhrases"\s*:\s*\[')

TICKS_PER_MS = 10_000  # batch offsets and durations are in 100 ns ticks
NON_SPEECH = ("NoMatch", "InitialSilenceTimeout", "BabbleTimeout")  # statuses of phrases with nothing recognised


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
    description = (
        "Azure Speech batch (recognizedPhrases[]) or fast (phrases[]) transcription JSON; roles via "
        "--speaker-roles (speaker 1, 2) or --channel-roles (channel 0, 1)"
    )

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        if not head.lstrip().startswith("{"):
            return False
        fast = FAST_KEY.search(head) is not None and '"offsetMilliseconds"' in head
        return fast or COMBINED_KEY.search(head) is not None or BATCH_KEY.search(head) is not None

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        conv_id = conversation_id_from_path(path)
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        key = "recognizedPhrases" if "recognizedPhrases" in doc else "phrases"
        phrases = doc.get(key)
        if not isinstance(phrases, list):
            raise RecordError(path, conv_id, key, "missing or not a list")
        recognized, skipped = [], Counter()
        for i, phrase in enumerate(phrases):
            record = f"{conv_id} {key}[{i}]"
            status = phrase.get("recognitionStatus", "Success") if isinstance(phrase, dict) else "Success"
            if status == "Success":
                recognized.append((i, record, phrase))
            elif status in NON_SPEECH:
                skipped[status] += 1
            else:
                yield BadRecord(
                    path,
                    record,
                    "recognitionStatus",
                    f"recognitionStatus is {status!r}, not 'Success'",
                    raw=json.dumps(phrase)[:2000],
                    utterances=1,
                )
        if skipped and not recognized:
            counts = ", ".join(f"{n} {status}" for status, n in skipped.items())
            yield BadRecord(path, conv_id, key, f"no speech: every phrase is silence or noise ({counts})")
            return
        try:
            yield self.conversation(
                path, conv_id, doc, recognized, fast=key == "phrases", skipped_segments=dict(skipped) or None
            )
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(recognized))

    def conversation(
        self,
        path: str,
        conv_id: str,
        doc: dict[str, Any],
        recognized: list[Any],
        fast: bool,
        skipped_segments: dict[str, int] | None,
    ) -> Conversation:
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
            if speaker_id is not None:
                speaker, role = mapped_speaker(names, self.speaker_roles, str(speaker_id), f"SPEAKER_{speaker_id}")
            else:
                speaker, role = mapped_speaker(names, self.channel_roles, str(channel or 0), f"CHANNEL_{channel or 0}")
            text, confidence = self.text_of(path, record, phrase, fast)
            duration = offset_ms(path, record, phrase, "duration")
            meta = {"source_id": i, "channel": channel, "speaker_id": speaker_id, "confidence": confidence}
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    index,
                    speaker,
                    text,
                    role=role,
                    start_ms=start,
                    end_ms=None if duration is None else start + duration,
                    metadata={k: v for k, v in meta.items() if v is not None},
                )
            )
        return self.make_conversation(
            path, conv_id, utterances, source=doc.get("source"), skipped_segments=skipped_segments
        )

    def text_of(self, path: str, record: str, phrase: dict[str, Any], fast: bool) -> tuple[Any, Any]:
        """Fast results put the text on the phrase; batch results in the top `nBest` hypothesis."""
        if fast:
            return phrase.get("text"), phrase.get("confidence")
        hypotheses = phrase.get("nBest")
        if not isinstance(hypotheses, list) or not hypotheses or not isinstance(hypotheses[0], dict):
            raise RecordError(path, record, "nBest", "missing or empty (no recognised text)")
        return hypotheses[0].get("display"), hypotheses[0].get("confidence")
