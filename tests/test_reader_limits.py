"""Reading bad and big inputs: nothing lost, memory bounded, every per-file failure one dead letter with its reason.

Each case reproduces a fault-injection finding of issue 13 (silent loss in a >16 MiB `.jsonl.gz`, gzip bomb, corrupt
and truncated gzip, 100k-deep nesting, symlink loops, a 10,000-turn canonical conversation, empty text, NUL, repeated
utterance index), through `read_items` and through the Beam `ReadConversations` transform.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem
from test_reader_roundtrip import beam_read

from bioserc.errors import BadRecord
from bioserc.readers import read_items, resolve_inputs
from bioserc.readers.base import MAX_UTTERANCES, read_limited
from bioserc.schema import Conversation, Utterance


MIB = 1024 * 1024
FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"


def split(items) -> tuple[list[Conversation], list[BadRecord]]:
    items = list(items)
    return [i for i in items if isinstance(i, Conversation)], [i for i in items if isinstance(i, BadRecord)]


class RemoteLike(LocalFileSystem):
    """Local files under a `remotetest://` scheme: the route `gs://` inputs take (matched and opened on workers)."""

    PREFIX = "remotetest://"

    @classmethod
    def scheme(cls) -> str:
        return "remotetest"

    def match(self, patterns, limits=None):
        results = super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)
        return [
            MatchResult(
                self.PREFIX + r.pattern, [FileMetadata(self.PREFIX + m.path, m.size_in_bytes) for m in r.metadata_list]
            )
            for r in results
        ]

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


def rows_jsonl(n_convs: int, turns: int, text_bytes: int) -> tuple[bytes, dict[str, list[str]]]:
    """Utterance rows (one a line), and the texts each conversation must come back with."""
    expected: dict[str, list[str]] = {}
    lines = []
    for c in range(n_convs):
        for t in range(turns):
            text = f"conversation {c} turn {t}: " + " ".join(
                f"w{(c * 31 + t * 7 + k) % 997}" for k in range(text_bytes // 5)
            )
            expected.setdefault(f"call-{c}", []).append(text)
            lines.append(
                json.dumps(
                    {
                        "conversation_id": f"call-{c}",
                        "turn_idx": t,
                        "speaker": "AGENT" if t % 2 else "CUSTOMER",
                        "text": text,
                    }
                )
            )
    return ("\n".join(lines) + "\n").encode(), expected


def texts(convs: list[Conversation]) -> dict[str, list[str]]:
    return {c.id: [u.text for u in c.utterances] for c in convs}


# -- gzip: read to the end, never past the cap ---------------------------------------------------------------------


def test_big_jsonl_gz_loses_no_utterance_in_beam(tmp_path):
    """The fault-injection case (the local route is covered by test_reader_roundtrip's Beam test)."""
    data, expected = rows_jsonl(400, 5, 8500)  # 2,000 rows, ~18 MiB: past Beam's 16 MiB decompression buffer
    assert len(data) > 16 * MIB
    path = tmp_path / "calls.jsonl.gz"
    path.write_bytes(gzip.compress(data, compresslevel=1))
    convs, dead = beam_read([f"{RemoteLike.PREFIX}{tmp_path}/*.gz"], tmp_path / "out")
    assert dead == []
    assert texts(convs) == expected and sum(len(c.utterances) for c in convs) == 2000
    assert {c.metadata["source_path"] for c in convs} == {f"{RemoteLike.PREFIX}{path}"}
    assert texts(split(read_items(str(path)))[0]) == expected


def test_multi_member_gzip_and_tiny_reads_are_read_whole():
    data, expected = rows_jsonl(3, 2, 100)
    lines = data.splitlines(keepends=True)
    packed = gzip.compress(b"".join(lines[:3])) + gzip.compress(b"".join(lines[3:])) + b"\0" * 8

    class Trickle(io.BytesIO):  # a stream that hands out a few bytes at a time, as network streams may
        def read(self, size: int = -1) -> bytes:
            return super().read(min(size, 1))

    assert read_limited(io.BytesIO(packed), "x.gz") == data
    assert read_limited(Trickle(packed), "x.gz") == data


def test_gzip_bomb_stops_at_the_limit_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b" " * (50 * MIB), compresslevel=9))  # ~50 KB that inflate to 50 MiB
    tracemalloc.start()
    try:
        convs, bad = split(read_items(str(bomb), max_bytes=MIB))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not convs and len(bad) == 1
    assert (bad[0].record, bad[0].field, bad[0].utterances) == ("file", None, 0)
    assert bad[0].reason == "decompressed size exceeds the limit of 1 MiB (--max-file-mb)"
    assert peak < 8 * MIB  # the cap plus one inflate piece, not the 50 MiB the bomb expands to


def test_plain_file_over_the_limit(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(rows_jsonl(20, 5, 2000)[0])
    (bad,) = split(read_items(str(path), max_bytes=MIB // 8))[1]
    assert bad.reason == "size exceeds the limit of 0.125 MiB (--max-file-mb)"


def gz_rows() -> bytes:
    return gzip.compress(rows_jsonl(10, 4, 400)[0])


def deep(prefix: str) -> bytes:
    return (prefix + "[" * 100_000).encode()


# file name, content, expected reason (start): each one file that must become exactly one file-level dead letter
BROKEN_FILES = [
    pytest.param(
        "corrupt.jsonl.gz",
        lambda: (g := gz_rows())[:40] + bytes(b ^ 0x5A for b in g[40:80]) + g[80:],
        "corrupt gzip data",
        id="corrupt-gzip",
    ),
    pytest.param(
        "truncated.jsonl.gz",
        lambda: (g := gz_rows())[: len(g) // 2],
        "corrupt gzip data: truncated",
        id="truncated-gzip",
    ),
    pytest.param(
        "garbage-after.jsonl.gz",
        lambda: gz_rows() + b"PK\x03\x04",
        "corrupt gzip data: trailing",
        id="trailing-garbage",
    ),
    pytest.param("meld.test.json", lambda: deep('{"dia1": '), "nesting too deep", id="deep-bioserc-json"),
    pytest.param(
        "tca-deep.json",
        lambda: deep('{"JobStatus": "COMPLETED", "Transcript": [{"Content": '),
        "nesting too deep",
        id="deep-aws-tca",
    ),
    pytest.param(
        "deep.jsonl.gz",
        lambda: gzip.compress(deep('{"id": "c1", "utterances": ')),
        "nesting too deep",
        id="deep-jsonl-gz",
    ),
]


@pytest.mark.parametrize("name, content, reason", BROKEN_FILES)
def test_broken_file_is_one_bad_record(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content())
    convs, bad = split(read_items(str(path)))
    assert not convs and len(bad) == 1
    assert bad[0].path == str(path) and bad[0].reason.startswith(reason), bad[0].message


def test_deep_nesting_costs_only_its_line(tmp_path):
    good = json.dumps({"conversation_id": "c1", "speaker": "AGENT", "text": "Hello there."})
    path = tmp_path / "rows.jsonl"
    path.write_bytes(good.encode() + b"\n" + deep('{"conversation_id": "c1", "text": ') + b"\n")
    convs, bad = split(read_items(str(path)))
    assert texts(convs) == {"c1": ["Hello there."]}
    assert [(b.record, b.utterances) for b in bad] == [("line 2", 1)] and bad[0].reason.startswith("nesting too deep")


# -- symlinks -------------------------------------------------------------------------------------------------------


def make_links(root: Path) -> dict[str, str]:
    """A loop between two files, a link to itself and a broken link, beside one good file; name -> expected reason."""
    root.mkdir()
    (root / "good.jsonl").write_bytes((FIXTURES / "utterance-rows.jsonl").read_bytes())
    os.symlink(root / "b.json", root / "a.json")
    os.symlink(root / "a.json", root / "b.json")
    os.symlink(root / "self.jsonl", root / "self.jsonl")
    os.symlink(root / "missing.json", root / "broken.json")
    return {
        "a.json": "symlink loop",
        "b.json": "symlink loop",
        "self.jsonl": "symlink loop",
        "broken.json": "cannot open",
    }


def test_symlink_loops_are_kept_as_inputs_and_dead_lettered(tmp_path):
    links = make_links(tmp_path / "calls")
    files = resolve_inputs(str(tmp_path / "calls"))
    assert sorted(os.path.basename(f) for f in files) == sorted([*links, "good.jsonl"])
    assert resolve_inputs(str(tmp_path / "calls" / "a.json")) == [str(tmp_path / "calls" / "a.json")]
    assert len(resolve_inputs(str(tmp_path / "calls" / "*.json"))) == 3
    convs, bad = split(read_items(str(tmp_path / "calls")))
    assert len(convs) == 2
    assert sorted(os.path.basename(b.path) for b in bad) == sorted(links)
    assert all(b.reason.startswith(links[os.path.basename(b.path)]) for b in bad), [b.message for b in bad]
    assert all(b.record == "file" and b.utterances == 0 for b in bad)


# -- checks every conversation passes, whatever the reader -----------------------------------------------------------


def canonical(conv_id: str, utterances: list[tuple[int, str, str]]) -> str:
    return Conversation(conv_id, [Utterance(i, speaker, text) for i, speaker, text in utterances]).to_json()


def write_canonical(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_utterance_cap_applies_to_canonical_jsonl(tmp_path):
    long = canonical("long", [(i, "AGENT" if i % 2 else "CUSTOMER", f"turn {i}") for i in range(10_000)])
    path = write_canonical(tmp_path, long, canonical("short", [(0, "AGENT", "Hi.")]))
    convs, bad = split(read_items(path))
    assert [c.id for c in convs] == ["short"]
    assert [(b.record, b.field, b.utterances) for b in bad] == [("long", "utterances", 10_000)]
    assert f"10000 utterances exceeds the limit of {MAX_UTTERANCES}" in bad[0].reason


def test_empty_and_whitespace_text_dead_lettered_per_utterance(tmp_path):
    path = write_canonical(
        tmp_path,
        canonical(
            "mixed",
            [(0, "AGENT", "Hello."), (1, "CUSTOMER", ""), (2, "AGENT", "How can I help?"), (3, "CUSTOMER", " \t\n ")],
        ),
        canonical("silent", [(0, "AGENT", " "), (1, "CUSTOMER", "")]),
    )
    convs, bad = split(read_items(path))
    assert [(c.id, [u.index for u in c.utterances]) for c in convs] == [("mixed", [0, 2])]
    assert [(b.record, b.field, b.utterances) for b in bad] == [
        ("mixed utterance 1", "text", 1),
        ("mixed utterance 3", "text", 1),
        ("silent utterance 0", "text", 1),
        ("silent utterance 1", "text", 1),
    ]
    assert all(b.reason == "empty or whitespace-only text" for b in bad)
    assert sum(len(c.utterances) for c in convs) + sum(b.utterances for b in bad) == 6


def test_vendor_turn_that_normalises_to_nothing_is_dead_lettered(tmp_path):
    doc = json.loads((FIXTURES / "tca-billing-dispute-0142.json").read_text(encoding="utf-8"))
    doc["Transcript"][2]["Content"] = "\u00a0 \x00 "  # nothing left once normalised
    path = tmp_path / "tca-billing-dispute-0142.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    (conv,), (bad,) = split(read_items(str(path)))
    assert [u.index for u in conv.utterances] == [0, 1, 3, 4, 5]
    assert (bad.record, bad.field, bad.utterances, bad.raw) == (
        "tca-billing-dispute-0142 utterance 2",
        "text",
        1,
        "\u00a0 \x00 ",
    )


@pytest.mark.parametrize(
    "field, utterance, position", [("text", (1, "CUSTOMER", "caf\x00e"), 3), ("speaker", (1, "CUST\x01", "Hi."), 4)]
)
def test_control_characters_in_canonical_jsonl_are_rejected(tmp_path, field, utterance, position):
    path = write_canonical(
        tmp_path,
        canonical("c1", [(0, "AGENT", "Hello.\tTabs\r\nare fine."), utterance]),
        canonical("c2", [(0, "AGENT", "Fine.")]),
    )
    convs, bad = split(read_items(path))
    assert [c.id for c in convs] == ["c2"]
    assert [(b.record, b.field, b.utterances) for b in bad] == [("c1", field, 2)]
    assert f"utterance 1 {field} contains control character U+000" in bad[0].reason
    assert f"at position {position}" in bad[0].reason


def test_duplicate_index_in_canonical_jsonl_is_rejected(tmp_path):
    path = write_canonical(
        tmp_path, canonical("c1", [(0, "AGENT", "Hi."), (1, "CUSTOMER", "Hello."), (1, "AGENT", "Again?")])
    )
    (bad,) = split(read_items(path))[1]
    assert (bad.record, bad.field, bad.utterances) == ("c1", "index", 3)
    assert bad.reason == "utterance index 1 appears more than once"


# -- the same through Beam: one dead-letter row per broken file, nothing lost ----------------------------------------


def test_beam_turns_every_per_file_failure_into_one_dead_letter(tmp_path):
    calls = tmp_path / "calls"
    links = make_links(calls)
    expected = {name: reason for name, reason in links.items()}
    for param in BROKEN_FILES:
        name, content, reason = param.values
        (calls / name).write_bytes(content())
        expected[name] = reason
    (calls / "bomb.json.gz").write_bytes(gzip.compress(b"{" + b" " * (8 * MIB)))
    expected["bomb.json.gz"] = "decompressed size exceeds the limit of 4 MiB (--max-file-mb)"
    big = canonical("long", [(i, "AGENT", f"turn {i}") for i in range(MAX_UTTERANCES + 1)])
    (calls / "long.jsonl").write_text(big + "\n" + canonical("ok", [(0, "AGENT", "Hi."), (1, "AGENT", " ")]) + "\n")

    convs, dead = beam_read([str(calls)], tmp_path / "out", max_bytes=4 * MIB)
    assert sorted(c.id for c in convs) == ["call-5001", "call-5002", "ok"]
    assert all(row["stage"] == "read" for row in dead)
    by_file: dict[str, list[dict[str, Any]]] = {}
    for row in dead:
        by_file.setdefault(os.path.basename(row["path"]), []).append(row)
    long_rows = by_file.pop("long.jsonl")
    assert sorted((r["record"], r["utterances"]) for r in long_rows) == [
        ("long", MAX_UTTERANCES + 1),
        ("ok utterance 1", 1),
    ]
    assert {name: [r["reason"][: len(expected[name])] for r in rows] for name, rows in by_file.items()} == {
        name: [reason] for name, reason in expected.items()
    }
    assert all(
        by_file[n][0]["record"] == "file" and by_file[n][0]["utterances"] == 0 and by_file[n][0]["raw"] is None
        for n in links
    )
