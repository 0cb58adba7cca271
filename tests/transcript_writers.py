"""Tiny writers for every transcript format the readers support: the minimal valid document of each, from a list of
calls. Shared by the reader round-trip tests and `bench/make_archive.py` (which builds synthetic archives)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bioserc.labels import LABEL_SETS
from bioserc.schema import Conversation, Utterance


@dataclass
class Call:
    id: str
    turns: list[tuple[str, str]]  # (speaker, text) as written to the file


def one_hot(k: int) -> list[int]:
    return [int(i == k) for i in range(9)]


def write_bioserc_json(calls: list[Call]) -> dict[str, bytes]:
    meld = len(LABEL_SETS["meld"])
    doc = {
        c.id: {
            "sentences": [t for _, t in c.turns],
            "labels": [i % meld for i in range(len(c.turns))],
            "genders": [one_hot(i % 2) for i in range(len(c.turns))],
        }
        for c in calls
    }
    return {f"meld.{calls[0].id}.json": json.dumps(doc, ensure_ascii=False).encode()}


def write_csv(header: list[str], rows: list[list[object]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_meld_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [
        [n, text, speaker, "joy", "positive", c.id, t, 1, 2, "00:00:01,000", "00:00:02,500"]
        for n, (c, t, speaker, text) in enumerate((c, t, s, x) for c in calls for t, (s, x) in enumerate(c.turns))
    ]
    header = [
        "Sr No.",
        "Utterance",
        "Speaker",
        "Emotion",
        "Sentiment",
        "Dialogue_ID",
        "Utterance_ID",
        "Season",
        "Episode",
        "StartTime",
        "EndTime",
    ]
    return {f"{calls[0].id}_sent_emo.csv": write_csv(header, rows)}


def write_emorynlp_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [
        [text, repr([speaker]), "Joyful", c.id.split("_")[2], t, *c.id.split("_")[:2], "00:00:01.000", "00:00:02.500"]
        for c in calls
        for t, (speaker, text) in enumerate(c.turns)
    ]  # id: season_episode_scene
    header = [
        "Utterance",
        "Speaker",
        "Emotion",
        "Scene_ID",
        "Utterance_ID",
        "Season",
        "Episode",
        "Start_Time",
        "End_Time",
    ]
    return {f"emorynlp_{calls[0].id}_final.csv": write_csv(header, rows)}


def write_calls_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [[c.id, speaker, text, f"{t}.25", f"{t}.75"] for c in calls for t, (speaker, text) in enumerate(c.turns)]
    return {f"{calls[0].id}.csv": write_csv(["conversation_id", "speaker", "text", "start", "end"], rows)}


def role(t: int) -> str:
    return ("CUSTOMER", "AGENT")[t % 2]


def per_call(make: Callable[[Call], dict]) -> Callable[[list[Call]], dict[str, bytes]]:
    return lambda calls: {f"{c.id}.json": json.dumps(make(c), ensure_ascii=False, indent=1).encode() for c in calls}


def aws_tca(c: Call) -> dict:
    return {
        "JobName": c.id,
        "JobStatus": "COMPLETED",
        "LanguageCode": "en-US",
        "Transcript": [
            {
                "Id": f"turn-{t}",
                "Content": text,
                "ParticipantRole": role(t),
                "BeginOffsetMillis": t * 1000,
                "EndOffsetMillis": t * 1000 + 900,
            }
            for t, (_, text) in enumerate(c.turns)
        ],
    }


def contact_lens(c: Call) -> dict:
    return {
        "CustomerMetadata": {"ContactId": c.id},
        "Participants": [
            {"ParticipantId": "c-1", "ParticipantRole": "CUSTOMER"},
            {"ParticipantId": "a-1", "ParticipantRole": "AGENT"},
        ],
        "Transcript": [
            {
                "Id": f"turn-{t}",
                "Content": text,
                "ParticipantId": ("c-1", "a-1")[t % 2],
                "BeginOffsetMillis": t * 1000,
                "EndOffsetMillis": t * 1000 + 900,
            }
            for t, (_, text) in enumerate(c.turns)
        ],
    }


def google_ccai(c: Call) -> dict:
    return {
        "conversation_info": {"categories": []},
        "entries": [
            {"start_timestamp_usec": 1715688000000000 + t * 1_000_000, "text": text, "role": role(t), "user_id": t % 2}
            for t, (_, text) in enumerate(c.turns)
        ],
    }


def google_ccai_api(c: Call) -> dict:
    return {
        "name": f"projects/p/locations/us/conversations/{c.id}",
        "languageCode": "en-US",
        "transcript": {
            "transcriptSegments": [
                {
                    "text": text,
                    "confidence": 0.9,
                    "channelTag": t % 2 + 1,
                    "words": [{"word": "w", "startOffset": f"{t}.100s", "endOffset": f"{t}.900s"}],
                    "segmentParticipant": {"role": ("END_USER", "HUMAN_AGENT")[t % 2], "userId": str(t % 2)},
                }
                for t, (_, text) in enumerate(c.turns)
            ]
        },
    }


def aws_transcribe(c: Call) -> dict:
    return {
        "jobName": c.id,
        "accountId": "123456789012",
        "status": "COMPLETED",
        "results": {
            "transcripts": [{"transcript": " ".join(text for _, text in c.turns)}],
            "audio_segments": [
                {
                    "id": t,
                    "transcript": text,
                    "start_time": f"{t}.25",
                    "end_time": f"{t}.75",
                    "speaker_label": f"spk_{t % 2}",
                    "items": [],
                }
                for t, (_, text) in enumerate(c.turns)
            ],
            "items": [],
        },
    }


def azure_batch(c: Call) -> dict:
    return {
        "source": f"{c.id}.wav",
        "recognizedPhrases": [
            {
                "recognitionStatus": "Success",
                "channel": 0,
                "speaker": t % 2 + 1,
                "offsetInTicks": t * 10_000_000,
                "durationInTicks": 9_000_000,
                "nBest": [{"confidence": 0.9, "display": text}],
            }
            for t, (_, text) in enumerate(c.turns)
        ],
    }


def azure_fast(c: Call) -> dict:
    """Azure writes `combinedPhrases` (the whole transcript, past the detection head in a long call) first."""
    return {
        "durationMilliseconds": len(c.turns) * 1000,
        "combinedPhrases": [{"text": " ".join(text for _, text in c.turns)}],
        "phrases": [
            {
                "speaker": t % 2 + 1,
                "offsetMilliseconds": t * 1000,
                "durationMilliseconds": 900,
                "text": text,
                "locale": "en-US",
                "confidence": 0.9,
            }
            for t, (_, text) in enumerate(c.turns)
        ],
    }


def write_canonical(calls: list[Call]) -> dict[str, bytes]:
    lines = [Conversation(c.id, [Utterance(t, s, x) for t, (s, x) in enumerate(c.turns)]).to_json() for c in calls]
    return {f"{calls[0].id}.json": "".join(line + "\n" for line in lines).encode()}  # .json: detected by content


def write_rows(calls: list[Call]) -> dict[str, bytes]:
    lines = [
        json.dumps({"conversation_id": c.id, "turn_idx": t, "speaker": s, "text": x}, ensure_ascii=False)
        for c in calls
        for t, (s, x) in enumerate(c.turns)
    ]
    return {f"{calls[0].id}.jsonl": "".join(line + "\n" for line in lines).encode()}


@dataclass
class Format:
    reader: str
    write: Callable[[list[Call]], dict[str, bytes]]
    normalised: bool = True  # canonical JSONL is taken as written
    calls: int = 4


FORMATS = [
    Format("bioserc-json", write_bioserc_json),
    Format("meld-csv", write_meld_csv),
    Format("emorynlp-csv", write_emorynlp_csv),
    Format("calls-csv", write_calls_csv),
    Format("aws-tca", per_call(aws_tca), calls=2),
    Format("contact-lens", per_call(contact_lens), calls=2),
    Format("google-ccai", per_call(google_ccai), calls=2),
    Format("google-ccai-api", per_call(google_ccai_api), calls=2),
    Format("aws-transcribe", per_call(aws_transcribe), calls=2),
    Format("azure-stt", per_call(azure_batch), calls=2),
    Format("azure-stt", per_call(azure_fast), calls=2),
    Format("jsonl", write_canonical, normalised=False),
    Format("jsonl", write_rows),
]


def save(directory: Path, files: dict[str, bytes], gzipped: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = directory / (name + ".gz" if gzipped else name)
        path.write_bytes(gzip.compress(data, compresslevel=1) if gzipped else data)
