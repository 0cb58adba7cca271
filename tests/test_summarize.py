"""`bioserc summarize OUT_DIR`: per-call analytics, calls table, archive.json and report.html from an utterances.jsonl,
no model; new thresholds change them; bad input is a clear error (exit 2). Byte-for-byte agreement with `bioserc
label`'s own outputs is checked on real runs in tests/test_label_pipeline.py.

    .venv/bin/python -m pytest -q tests/test_summarize.py
"""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_analytics import call

from bioserc import cli
from bioserc.analytics.calls import CALLS_COLUMNS


class Anchors(HTMLParser):
    """Every id in a page, and the fragment links of its review list (the table after "Calls to review")."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.review: list[str] = []
        self._in_review = self._heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self._heading = tag == "h3"
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])
            if self._in_review:
                self.review.append(attrs["href"][1:])

    def handle_data(self, data):
        if self._heading:
            self._in_review = data.startswith("Calls to review")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_review = False


def parse(page: str) -> Anchors:
    anchors = Anchors()
    anchors.feed(page)
    return anchors


def write_rows(folder: Path, calls: list[list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utterances.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for rows in calls for r in rows)
    )
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    """Five calls: two go wrong (one with an id that needs cleaning for an HTML id), three are fine."""
    calm = [("AGENT", "agent", 0.1, 0), ("CUSTOMER", "customer", 0.2, 4000)]
    angry = [
        ("AGENT", "agent", 0.0, 0),
        ("CUSTOMER", "customer", -0.9, 3000),
        ("AGENT", "agent", 0.0, 8000),
        ("CUSTOMER", "customer", -0.8, 12000),
    ]
    return write_rows(
        tmp_path / "out",
        [
            call("a-calm", calm),
            call("b-calm", calm),
            call("z angry/1", angry),
            call("c-calm", calm),
            call("y-angry", angry[:2] + [("AGENT", "agent", 0.5)]),
        ],
    )


def summarize(*argv: str) -> int:
    return cli.main(["summarize", *map(str, argv)])


def test_summarize_writes_every_per_call_and_archive_output(out, capsys):
    assert summarize(out, "--report-calls", "1") == 0
    assert "summarised 5 calls (13 utterances); 2 flagged for review" in capsys.readouterr().err
    convs = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    assert [c["conversation_id"] for c in convs] == ["a-calm", "b-calm", "z angry/1", "c-calm", "y-angry"]
    with open(out / "calls.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [name for name, _ in CALLS_COLUMNS]
    assert [r["conversation_id"] for r in table] == [c["conversation_id"] for c in convs]
    parquet = pq.read_table(out / "calls.parquet").to_pylist()
    assert parquet[2]["customer_score"] == convs[2]["analytics"]["roles"][1]["score"] == -0.8333
    archive = json.loads((out / "archive.json").read_text())
    assert (archive["calls"], archive["utterances"], archive["labels"]) == (
        5,
        13,
        {"anger": 3, "joy": 1, "neutral": 9},
    )
    assert [r["conversation_id"] for r in archive["review"]] == ["y-angry", "z angry/1"]  # -0.90, then -0.83
    # the report opens with the archive page, and every review link lands on a section of the page, although only
    # one call is plotted besides them (--report-calls 1)
    page = (out / "report.html").read_text()
    assert page.index('id="archive"') < page.index("<h2>Run</h2>") < page.index('id="call-')
    anchors = parse(page)
    assert len(anchors.review) == 2 and set(anchors.review) <= anchors.ids and set(anchors.links) <= anchors.ids
    assert anchors.review[0] == "call-y-angry" and re.fullmatch(r"call-z-angry-1-[0-9a-f]{8}", anchors.review[1])
    assert len(re.findall(r'<h3 id="call-', page)) == 3  # the two reviewed calls + the first by id


def test_new_thresholds_change_the_outputs_without_the_model(out):
    assert summarize(out, "--report-calls", "0") == 0
    before = json.loads((out / "archive.json").read_text())
    assert (
        summarize(
            out,
            "--report-calls",
            "0",
            "--min-negative-run",
            "3",
            "--negative-threshold",
            "0.95",
            "--review-calls",
            "1",
        )
        == 0
    )
    after = json.loads((out / "archive.json").read_text())
    assert before["flagged_calls"] == 2 and after["flagged_calls"] == 0 and after["review"] == []
    assert after["thresholds"] == {
        "negative": 0.95,
        "min_negative_run": 3,
        "shift_delta": 0.8,
        "end_weight": 2.0,
        "review_calls": 1,
    }
    assert not list(out.glob(".staging-*"))


def test_a_folder_without_utterances_is_an_error_naming_the_file(tmp_path, capsys):
    assert summarize(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'utterances.jsonl'}: no such file" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock left


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{torn", "line 3: not JSON"),
        (
            '{"conversation_id": "x", "index": 0, "speaker": "A", "label": "joy"}',
            "line 3: not an utterance row (field 'probs'",
        ),
        (
            '{"conversation_id": "x", "index": 0, "speaker": "A", "label": "joy", "probs": {"joy": "high"}}',
            "line 3: not an utterance row (field 'probs'",
        ),
    ],
)
def test_a_malformed_line_is_an_error_naming_file_and_line(out, capsys, line, message):
    path = out / "utterances.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + [line] + lines[2:]) + "\n")
    assert summarize(out) == 2
    err = capsys.readouterr().err
    assert f"error: {path}" in err and message in err
    assert not (out / "archive.json").exists() and not list(out.glob(".staging-*"))


def test_help_shows_every_threshold_with_its_default(capsys):
    with pytest.raises(SystemExit):
        summarize("--help")
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (
        ("--negative-threshold", "0.5"),
        ("--min-negative-run", "2"),
        ("--shift-delta", "0.8"),
        ("--end-weight", "2.0"),
        ("--review-calls", "20"),
    ):
        assert re.search(rf"{flag} \w .*?\(default: {re.escape(default)}\)", text), flag
