"""Zero silent loss: random conversations written in every registered format, plain and gzipped, read back whole.

A seeded generator makes conversations with unicode text (typographic punctuation, combining marks, emoji, RTL,
tabs and line breaks, CSV and JSON metacharacters) and some turns longer than the 64 KiB detection head; one gzipped
file of utterance rows inflates to more than 16 MiB, past the I/O buffer sizes. Tiny writers (`transcript_writers`)
serialise them in the shape each reader documents; everything is auto-detected and read through `read_items` and
through the pipelines' Beam reader (`FileGroups` + `ParseFiles`). Every utterance must come back, in order, with its
text (normalised where the format is normalised) and its original text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from transcript_writers import FORMATS, Call, save, write_rows

from bioserc.errors import BadRecord
from bioserc.normalize import normalize_text
from bioserc.pipelines.io import FileGroups, ParseFiles
from bioserc.pipelines.records import DEAD
from bioserc.readers import read_items, reader_names
from bioserc.schema import Conversation


SEED = 20240513
HEAD = 64 * 1024
MIB = 1024 * 1024

WORDS = [
    "hello",
    "café",
    "naïve",
    "Straße",
    "e\u0301te\u0301",
    "日本語です",
    "中文",
    "😀",
    "👍🏽",
    "привет",
    "Ωμέγα",
    "مرحبا",
    "עברית",
    "it’s",
    "“quoted”",
    "—",
    "…",
    "\u00a0",
    "don't",
    '"',
    "'",
    "\\",
    ",",
    ";",
    "{",
    "}",
    "[1,",
    "2]",
    "<b>bold</b>",
    "null",
    "NaN",
    "1e308",
    "\\n",
    "%s",
    "$25",
    "#",
    "\t",
    "\n",
    "\r\n",
    "  ",
    "\u2028",
    "\x85",
]
SPEAKERS = ["Joey", "Ross Geller", "Émilie", "张伟", "O'Brien", 'Dr. "Quote"', "SPEAKER,1"]


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
        turns = [
            (speakers[t % 2], random_text(rng, long=long and c == 0 and t == 0)) for t in range(rng.randint(1, 12))
        ]
        calls.append(Call(f"{prefix}_{c}", turns))
    return calls


def beam_read(
    inputs: list[str],
    out: Path,
    fmt: str = "auto",
    reader_options: dict[str, Any] | None = None,
    max_bytes: int | None = None,
) -> tuple[list[Conversation], list[dict[str, Any]]]:
    """Run the pipelines' reader on Beam's in-process runner; return its conversations and dead-letter rows."""
    limit = {} if max_bytes is None else {"max_bytes": max_bytes}
    with beam.Pipeline() as pipeline:
        read = (
            pipeline
            | FileGroups(inputs, 4)
            | "Parse" >> beam.ParDo(ParseFiles(fmt, reader_options or {}, batch=3, **limit))
        )
        _ = (
            read
            | "Convs" >> beam.FlatMap(lambda batch: [c.to_json() for c in batch])
            | "WriteConvs" >> beam.io.WriteToText(str(out / "convs"))
        )
        _ = (
            read
            | "DeadRows" >> beam.FlatMap(lambda batch: [row for name, row in batch.records if name == DEAD])
            | "Dead" >> beam.Map(json.dumps)
            | "WriteDead" >> beam.io.WriteToText(str(out / "dead"))
        )
    rows = {
        name: [
            json.loads(line)
            for f in sorted(out.glob(f"{name}*"))
            for line in f.read_text(encoding="utf-8").split("\n")
            if line
        ]  # not splitlines: U+2028 is text
        for name in ("convs", "dead")
    }
    return [Conversation.from_dict(c) for c in rows["convs"]], rows["dead"]


def build_archive(root: Path) -> dict[str, tuple[str, list[tuple[str, str | None]]]]:
    """Write every format plain and gzipped under `root`; conversation id -> (reader, [(text, original_text)])."""
    rng = random.Random(SEED)
    expected: dict[str, tuple[str, list[tuple[str, str | None]]]] = {}
    for variant in ("plain", "gz"):
        for n, fmt in enumerate(FORMATS):
            calls = random_calls(rng, f"{variant}-{n}-{fmt.reader}_x", fmt.calls, long=True)
            save(root / variant, fmt.write(calls), variant == "gz")
            for c in calls:
                expected[c.id] = (
                    fmt.reader,
                    [(normalize_text(x), x) if fmt.normalised else (x, None) for _, x in c.turns],
                )
    big = [
        Call(f"gz-big-{c}", [(rng.choice(SPEAKERS), f"{c}.{t} " + bulky(rng)) for t in range(5)]) for c in range(400)
    ]  # 2,000 rows of ~8.6 KB, gzipped: the case that lost 342 utterances
    files = write_rows(big)
    assert sum(map(len, files.values())) > 16 * MIB
    save(root / "gz", files, gzipped=True)
    expected.update({c.id: ("jsonl", [(normalize_text(x), x) for _, x in c.turns]) for c in big})
    return expected


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, list[tuple[str, str | None]]]]]:
    root = tmp_path_factory.mktemp("roundtrip")
    return root, build_archive(root)


def assert_all_back(convs: list[Conversation], expected: dict[str, tuple[str, list[tuple[str, str | None]]]]):
    got = {
        c.id: (c.metadata.get("source_format", "jsonl"), [(u.text, u.original_text) for u in c.utterances])
        for c in convs
    }
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
