"""Zero silent loss: random conversations written in every registered format, plain and gzipped, read back whole.

A seeded generator makes conversations with unicode text (typographic punctuation, combining marks, emoji, RTL,
tabs and line breaks, CSV and JSON metacharacters) and some turns longer than the 64 KiB detection head; one gzipped
file of utterance rows inflates to more than 16 MiB, past the I/O buffer sizes. Tiny writers below serialise them in
the shape each reader documents; everything is auto-detected and read through `read_items` and through the Beam
`ReadConversations`. Every utterance must come back, in order, with its text (normalised where the format is
normalised) and its original text.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from bioserc.errors import BadRecord
from bioserc.labels import LABEL_SETS
from bioserc.normalize import normalize_text
from bioserc.pipelines.io import ReadConversations
from bioserc.readers import read_items, reader_names
from bioserc.schema import Conversation, Utterance


SEED = 20240513
HEAD = 64 * 1024
MIB = 1024 * 1024

WORDS = ["hello", "café", "naïve", "Straße", "e\u0301te\u0301", "日本語です", "中文", "😀", "👍🏽", "привет", "Ωμέγα",
         "مرحبا", "עברית", "it’s", "“quoted”", "—", "…", "\u00a0", "don't", '"', "'", "\\", ",", ";", "{", "}",
         "[1,", "2]", "<b>bold</b>", "null", "NaN", "1e308", "\\n", "%s", "$25", "#", "\t", "\n", "\r\n", "  ",
         "\u2028", "\x85"]
SPEAKERS = ["Joey", "Ross Geller", "Émilie", "张伟", "O'Brien", "Dr. \"Quote\"", "SPEAKER,1"]


@dataclass
class Call:
    id: str
    turns: list[tuple[str, str]]  # (speaker, text) as written to the file


def random_text(rng: random.Random, long: bool = False) -> str:
    words = [rng.choice(["Okay", "Well", "Ja", "Oui", "Да", "好"])]
    words += rng.choices(WORDS, k=rng.randint(0, 25))
    text = " ".join(words)
    if long:  # longer than the detection head on its own
        text += " " + " ".join(rng.choices(WORDS[:14], k=HEAD // 5))
    return text


def bulky(rng: random.Random, size: int = 8600) -> str:
    text = random_text(rng) + " "
    return text * (size // len(text.encode()) + 1)


def random_calls(rng: random.Random, prefix: str, n: int, long: bool) -> list[Call]:
    calls = []
    for c in range(n):
        speakers = rng.sample(SPEAKERS, 2)
        turns = [(speakers[t % 2], random_text(rng, long=long and c == 0 and t == 0))
                 for t in range(rng.randint(1, 12))]
        calls.append(Call(f"{prefix}_{c}", turns))
    return calls


def beam_read(inputs: list[str], out: Path, **kwargs: Any) -> tuple[list[Conversation], list[dict[str, Any]]]:
    """Run `ReadConversations` on Beam's in-process runner; return its conversations and dead-letter rows."""
    with beam.Pipeline() as pipeline:
        read = pipeline | ReadConversations(inputs, **kwargs)
        _ = read.main | "Convs" >> beam.Map(lambda c: c.to_json()) | "WriteConvs" >> beam.io.WriteToText(
            str(out / "convs"))
        _ = read.dead_letter | "Dead" >> beam.Map(json.dumps) | "WriteDead" >> beam.io.WriteToText(str(out / "dead"))
    rows = {name: [json.loads(line) for f in sorted(out.glob(f"{name}*"))
                   for line in f.read_text(encoding="utf-8").split("\n") if line]  # not splitlines: U+2028 is text
            for name in ("convs", "dead")}
    return [Conversation.from_dict(c) for c in rows["convs"]], rows["dead"]


# -- tiny writers: one per format, the minimal valid document --------------------------------------------------------


def one_hot(k: int) -> list[int]:
    return [int(i == k) for i in range(9)]


def write_bioserc_json(calls: list[Call]) -> dict[str, bytes]:
    meld = len(LABEL_SETS["meld"])
    doc = {c.id: {"sentences": [t for _, t in c.turns], "labels": [i % meld for i in range(len(c.turns))],
                  "genders": [one_hot(i % 2) for i in range(len(c.turns))]} for c in calls}
    return {f"meld.{calls[0].id}.json": json.dumps(doc, ensure_ascii=False).encode()}


def write_csv(header: list[str], rows: list[list[object]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_meld_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [[n, text, speaker, "joy", "positive", c.id, t, 1, 2, "00:00:01,000", "00:00:02,500"]
            for n, (c, t, speaker, text) in enumerate((c, t, s, x) for c in calls for t, (s, x) in enumerate(c.turns))]
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
              "Episode", "StartTime", "EndTime"]
    return {f"{calls[0].id}_sent_emo.csv": write_csv(header, rows)}


def write_emorynlp_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [[text, repr([speaker]), "Joyful", c.id.split("_")[2], t, *c.id.split("_")[:2], "00:00:01.000",
             "00:00:02.500"] for c in calls for t, (speaker, text) in enumerate(c.turns)]  # id: season_episode_scene
    header = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode", "Start_Time",
              "End_Time"]
    return {f"emorynlp_{calls[0].id}_final.csv": write_csv(header, rows)}


def write_calls_csv(calls: list[Call]) -> dict[str, bytes]:
    rows = [[c.id, speaker, text, f"{t}.25", f"{t}.75"] for c in calls for t, (speaker, text) in enumerate(c.turns)]
    return {f"{calls[0].id}.csv": write_csv(["conversation_id", "speaker", "text", "start", "end"], rows)}


def role(t: int) -> str:
    return ("CUSTOMER", "AGENT")[t % 2]


def per_call(make: Callable[[Call], dict]) -> Callable[[list[Call]], dict[str, bytes]]:
    return lambda calls: {f"{c.id}.json": json.dumps(make(c), ensure_ascii=False, indent=1).encode() for c in calls}


def aws_tca(c: Call) -> dict:
    return {"JobName": c.id, "JobStatus": "COMPLETED", "LanguageCode": "en-US", "Transcript": [
        {"Id": f"turn-{t}", "Content": text, "ParticipantRole": role(t), "BeginOffsetMillis": t * 1000,
         "EndOffsetMillis": t * 1000 + 900} for t, (_, text) in enumerate(c.turns)]}


def contact_lens(c: Call) -> dict:
    return {"CustomerMetadata": {"ContactId": c.id},
            "Participants": [{"ParticipantId": "c-1", "ParticipantRole": "CUSTOMER"},
                             {"ParticipantId": "a-1", "ParticipantRole": "AGENT"}],
            "Transcript": [{"Id": f"turn-{t}", "Content": text, "ParticipantId": ("c-1", "a-1")[t % 2],
                            "BeginOffsetMillis": t * 1000, "EndOffsetMillis": t * 1000 + 900}
                           for t, (_, text) in enumerate(c.turns)]}


def google_ccai(c: Call) -> dict:
    return {"conversation_info": {"categories": []}, "entries": [
        {"start_timestamp_usec": 1715688000000000 + t * 1_000_000, "text": text, "role": role(t), "user_id": t % 2}
        for t, (_, text) in enumerate(c.turns)]}


def google_ccai_api(c: Call) -> dict:
    return {"name": f"projects/p/locations/us/conversations/{c.id}", "languageCode": "en-US", "transcript": {
        "transcriptSegments": [{"text": text, "confidence": 0.9, "channelTag": t % 2 + 1,
                                "words": [{"word": "w", "startOffset": f"{t}.100s", "endOffset": f"{t}.900s"}],
                                "segmentParticipant": {"role": ("END_USER", "HUMAN_AGENT")[t % 2],
                                                       "userId": str(t % 2)}}
                               for t, (_, text) in enumerate(c.turns)]}}


def aws_transcribe(c: Call) -> dict:
    return {"jobName": c.id, "accountId": "123456789012", "status": "COMPLETED", "results": {
        "transcripts": [{"transcript": " ".join(text for _, text in c.turns)}],
        "audio_segments": [{"id": t, "transcript": text, "start_time": f"{t}.25", "end_time": f"{t}.75",
                            "speaker_label": f"spk_{t % 2}", "items": []} for t, (_, text) in enumerate(c.turns)],
        "items": []}}


def azure_batch(c: Call) -> dict:
    return {"source": f"{c.id}.wav", "recognizedPhrases": [
        {"recognitionStatus": "Success", "channel": 0, "speaker": t % 2 + 1, "offsetInTicks": t * 10_000_000,
         "durationInTicks": 9_000_000, "nBest": [{"confidence": 0.9, "display": text}]}
        for t, (_, text) in enumerate(c.turns)]}


def azure_fast(c: Call) -> dict:
    """Azure writes `combinedPhrases` (the whole transcript, past the detection head in a long call) first."""
    return {"durationMilliseconds": len(c.turns) * 1000,
            "combinedPhrases": [{"text": " ".join(text for _, text in c.turns)}],
            "phrases": [{"speaker": t % 2 + 1, "offsetMilliseconds": t * 1000, "durationMilliseconds": 900,
                         "text": text, "locale": "en-US", "confidence": 0.9} for t, (_, text) in enumerate(c.turns)]}


def write_canonical(calls: list[Call]) -> dict[str, bytes]:
    lines = [Conversation(c.id, [Utterance(t, s, x) for t, (s, x) in enumerate(c.turns)]).to_json()
             for c in calls]
    return {f"{calls[0].id}.json": "".join(line + "\n" for line in lines).encode()}  # .json: detected by content


def write_rows(calls: list[Call]) -> dict[str, bytes]:
    lines = [json.dumps({"conversation_id": c.id, "turn_idx": t, "speaker": s, "text": x}, ensure_ascii=False)
             for c in calls for t, (s, x) in enumerate(c.turns)]
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


def build_archive(root: Path) -> dict[str, tuple[str, list[tuple[str, str | None]]]]:
    """Write every format plain and gzipped under `root`; conversation id -> (reader, [(text, original_text)])."""
    rng = random.Random(SEED)
    expected: dict[str, tuple[str, list[tuple[str, str | None]]]] = {}
    for variant in ("plain", "gz"):
        for n, fmt in enumerate(FORMATS):
            calls = random_calls(rng, f"{variant}-{n}-{fmt.reader}_x", fmt.calls, long=True)
            save(root / variant, fmt.write(calls), variant == "gz")
            for c in calls:
                expected[c.id] = (fmt.reader, [(normalize_text(x), x) if fmt.normalised else (x, None)
                                               for _, x in c.turns])
    big = [Call(f"gz-big-{c}", [(rng.choice(SPEAKERS), f"{c}.{t} " + bulky(rng)) for t in range(5)])
           for c in range(400)]  # 2,000 rows of ~8.6 KB, gzipped: the case that lost 342 utterances
    files = write_rows(big)
    assert sum(map(len, files.values())) > 16 * MIB
    save(root / "gz", files, gzipped=True)
    expected.update({c.id: ("jsonl", [(normalize_text(x), x) for _, x in c.turns]) for c in big})
    return expected


def save(directory: Path, files: dict[str, bytes], gzipped: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = directory / (name + ".gz" if gzipped else name)
        path.write_bytes(gzip.compress(data, compresslevel=1) if gzipped else data)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, list[tuple[str, str | None]]]]]:
    root = tmp_path_factory.mktemp("roundtrip")
    return root, build_archive(root)


def assert_all_back(convs: list[Conversation], expected: dict[str, tuple[str, list[tuple[str, str | None]]]]):
    got = {c.id: (c.metadata.get("source_format", "jsonl"), [(u.text, u.original_text) for u in c.utterances])
           for c in convs}
    assert len(got) == len(convs)  # no id read twice
    assert sorted(got) == sorted(expected)
    for conv_id, want in expected.items():
        assert got[conv_id] == want, conv_id  # reader detected, every utterance in order, text unaltered
    assert sum(len(c.utterances) for c in convs) == sum(len(turns) for _, turns in expected.values())


def test_every_reader_is_covered():
    assert {f.reader for f in FORMATS} == set(reader_names())


@pytest.mark.parametrize("variant", ["plain", "gz"])
def test_read_items_round_trip(archive, variant):
    root, expected = archive
    items = list(read_items(str(root / variant)))
    bad = [i.message for i in items if isinstance(i, BadRecord)]
    assert bad == []
    wanted = {k: v for k, v in expected.items() if k.startswith(variant)}
    assert_all_back([i for i in items if isinstance(i, Conversation)], wanted)


def test_beam_round_trip(archive, tmp_path):
    root, expected = archive
    convs, dead = beam_read([str(root / "plain"), str(root / "gz")], tmp_path)
    assert dead == []
    assert_all_back(convs, expected)
