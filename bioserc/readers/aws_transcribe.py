"""AWS Transcribe (standard, not Call Analytics) batch job output: one call per JSON file, everything under `results`.

Fields follow https://docs.aws.amazon.com/transcribe/latest/dg/how-input.html#how-it-works-output and the
diarization and channel identification examples (diarization-output-batch, channel-id-output-batch). Where the job
wrote `results.audio_segments`, each segment is one utterance. Older outputs have only words: `results.items`
(pronunciation and punctuation) with each word's speaker from its own label or from `speaker_labels.segments` /
`channel_labels.channels`; a turn is then a run of words by one speaker in time order (consecutive segments of one
speaker merge), punctuation attached to the word before it. The output names no roles: roles come only from
`speaker_roles` (keys spk_0, spk_1, ...) and `channel_roles` (ch_0, ch_1); unmapped speakers are SPEAKER_<n> or
CHANNEL_<n> with role None. An audio segment with an empty transcript is not speech: it is skipped and counted in
the conversation's `skipped_segments`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bioserc.errors import BadRecord, RecordError
from bioserc.readers.aws_tca import dig
from bioserc.readers.base import (
    BaseReader,
    ReadItem,
    conversation_id_from_path,
    decode_utf8,
    load_json,
    register_reader,
    speech_segments,
)
from bioserc.readers.roles import mapped_speaker
from bioserc.schema import Conversation, Utterance


RESULTS_KEY = re.compile(r'"results"\s*:\s*\{')
TRANSCRIPTS_KEY = re.compile(r'"transcripts"\s*:\s*\[')


@dataclass(slots=True)
class Word:
    """One spoken word of `results.items`, with the punctuation that follows it appended to `text`."""

    item: int
    start: int
    end: int | None
    speaker: str
    role: str | None
    label: dict[str, str]
    text: str


def seconds_ms(path: str, record: str, field: str, value: Any) -> int | None:
    """AWS writes times as strings of seconds ("4.87"); a value that is not a number is a broken record."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        return round(float(value) * 1000)
    except (TypeError, ValueError, OverflowError):
        raise RecordError(path, record, field, f"{value!r} is not a number of seconds") from None


def word_labels(results: dict[str, Any]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """(start_time, end_time) of each word -> its speaker or channel label, for outputs whose items carry none."""
    labels: dict[tuple[Any, Any], dict[str, Any]] = {}
    for seg in objects(dig(results, "speaker_labels", "segments")):
        for item in objects(seg.get("items")):
            label = item.get("speaker_label") or seg.get("speaker_label")
            labels[(item.get("start_time"), item.get("end_time"))] = {"speaker_label": label}
    for channel in objects(dig(results, "channel_labels", "channels")):
        for item in objects(channel.get("items")):
            label = item.get("channel_label") or channel.get("channel_label")
            labels[(item.get("start_time"), item.get("end_time"))] = {"channel_label": label}
    return labels


def word_before(words: list[Word], punctuation: dict[str, Any]) -> Word | None:
    """The word a punctuation mark belongs to: the last one before it, of its own speaker or channel where it names
    one (the two channels' items may interleave)."""
    for word in reversed(words):
        if all(punctuation.get(field, label) == label for field, label in word.label.items()):
            return word
    return None


def objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


@register_reader
class AwsTranscribeReader(BaseReader):
    name = "aws-transcribe"
    priority = 34
    description = (
        "AWS Transcribe (standard) job JSON: results.audio_segments, or results.items with speaker_labels "
        "/ channel_labels; roles via --speaker-roles spk_0=... or --channel-roles ch_0=..."
    )

    @classmethod
    def detect(cls, path: str, head: str) -> bool:
        return (
            head.lstrip().startswith("{")
            and RESULTS_KEY.search(head) is not None
            and TRANSCRIPTS_KEY.search(head) is not None
        )

    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        doc = load_json(path, decode_utf8(path, data))
        if not isinstance(doc, dict):
            raise RecordError(path, "file", None, f"top level is a JSON {type(doc).__name__}, expected an object")
        conv_id = str(doc.get("jobName") or conversation_id_from_path(path))
        results = doc.get("results")
        if not isinstance(results, dict):
            raise RecordError(path, conv_id, "results", "missing or not an object")
        if doc.get("status", "COMPLETED") != "COMPLETED":
            raise RecordError(path, conv_id, "status", f"job status is {doc['status']!r}, not 'COMPLETED'")
        segments = results.get("audio_segments")
        try:
            if "audio_segments" in results:
                yield self.from_audio_segments(path, conv_id, results)
            else:
                yield self.from_items(path, conv_id, results)
        except RecordError as err:
            yield BadRecord.from_error(err, utterances=len(segments) if isinstance(segments, list) else 0)

    def speaker_of(
        self, path: str, record: str, names: dict[tuple[str, str], str], labelled: dict[str, Any]
    ) -> tuple[str, str | None, dict[str, str]]:
        """(speaker, role, {label field: label}) from a segment's or word's spk_<n> or ch_<n> label."""
        for field, prefix, kind, roles in (
            ("speaker_label", "spk_", "SPEAKER", self.speaker_roles),
            ("channel_label", "ch_", "CHANNEL", self.channel_roles),
        ):
            label = labelled.get(field)
            if label is None:
                continue
            if not isinstance(label, str) or not label.strip():
                raise RecordError(path, record, field, f"{label!r} is not a label like {prefix}0")
            speaker, role = mapped_speaker(names, roles, label, f"{kind}_{label.removeprefix(prefix)}")
            return speaker, role, {field: label}
        raise RecordError(
            path,
            record,
            "speaker_label",
            "no speaker_label or channel_label: turns need a job run "
            "with speaker partitioning (ShowSpeakerLabels) or channel identification",
        )

    def from_audio_segments(self, path: str, conv_id: str, results: dict[str, Any]) -> Conversation:
        segments = results["audio_segments"]
        if not isinstance(segments, list):
            raise RecordError(path, conv_id, "audio_segments", "not a list")
        names: dict[tuple[str, str], str] = {}
        utterances: list[Utterance] = []
        skipped: Counter = Counter()
        for i, record, seg, text in speech_segments(path, conv_id, "audio_segments", segments, "transcript", skipped):
            speaker, role, label = self.speaker_of(path, record, names, seg)
            meta = {"source_id": seg.get("id", i), **label}
            utterances.append(
                self.make_utterance(
                    path,
                    record,
                    len(utterances),
                    speaker,
                    text,
                    role=role,
                    start_ms=seconds_ms(path, record, "start_time", seg.get("start_time")),
                    end_ms=seconds_ms(path, record, "end_time", seg.get("end_time")),
                    metadata=meta,
                )
            )
        return self.make_conversation(
            path, conv_id, utterances, language=results.get("language_code"), skipped_segments=dict(skipped) or None
        )

    def from_items(self, path: str, conv_id: str, results: dict[str, Any]) -> Conversation:
        items = results.get("items")
        if not isinstance(items, list):
            raise RecordError(path, conv_id, "items", "missing or not a list (and no audio_segments)")
        labels = word_labels(results)
        names: dict[tuple[str, str], str] = {}
        words: list[Word] = []
        for i, item in enumerate(items):
            record = f"{conv_id} items[{i}]"
            if not isinstance(item, dict):
                raise RecordError(path, record, None, "item is not a JSON object", raw=json.dumps(item))
            alternatives = item.get("alternatives")
            best = alternatives[0] if isinstance(alternatives, list) and alternatives else None
            content = best.get("content") if isinstance(best, dict) else None
            if not isinstance(content, str):
                raise RecordError(path, record, "alternatives", "missing, empty or without a content string")
            if item.get("type") == "punctuation":
                owner = word_before(words, item)
                if owner is not None:  # nothing to attach a leading mark to
                    owner.text += content
                continue
            if item.get("type") != "pronunciation":
                raise RecordError(path, record, "type", f"{item.get('type')!r} is not pronunciation or punctuation")
            start = seconds_ms(path, record, "start_time", item.get("start_time"))
            if start is None:
                raise RecordError(path, record, "start_time", "a spoken word has no start_time")
            labelled = (
                item
                if {"speaker_label", "channel_label"} & item.keys()
                else labels.get((item.get("start_time"), item.get("end_time")), {})
            )
            speaker, role, label = self.speaker_of(path, record, names, labelled)
            end = seconds_ms(path, record, "end_time", item.get("end_time"))
            words.append(Word(i, start, end, speaker, role, label, content))
        utterances: list[Utterance] = []
        in_time = sorted(words, key=lambda w: w.start)  # stable; the two channels' words may interleave
        for _, group in itertools.groupby(in_time, key=lambda w: w.speaker):
            turn = list(group)
            first = turn[0]
            utterances.append(
                self.make_utterance(
                    path,
                    f"{conv_id} items[{first.item}]",
                    len(utterances),
                    first.speaker,
                    " ".join(w.text for w in turn),
                    role=first.role,
                    start_ms=first.start,
                    end_ms=turn[-1].end,
                    metadata={"source_id": first.item, **first.label},
                )
            )
        return self.make_conversation(path, conv_id, utterances, language=results.get("language_code"))
