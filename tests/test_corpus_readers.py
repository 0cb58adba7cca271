"""Research-corpus readers (BiosERC JSON, MELD CSV, EmoryNLP CSV), their bad-input handling, and `convert`/`stats`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bioserc.cli import main
from bioserc.errors import BadRecord
from bioserc.jsonio import read_jsonl
from bioserc.labels import IEMOCAP_NAMES, LABEL_SETS
from bioserc.readers import ReadReport, read_conversations, read_items, reader_for
from bioserc.schema import Conversation


RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw"
needs_raw = pytest.mark.skipif(not RAW.is_dir(), reason="shared/data/raw not present")


def onehot(k: int) -> list[int]:
    return [int(i == k) for i in range(9)]


MELD_DOC = {
    "1039": {
        "labels": [3, 1, 0],
        "sentences": ["Oh my God, he\x92s lost it.", "What?", "Nothing\x85 forget it."],
        "genders": [onehot(0), onehot(1), onehot(0)],
    },
    "1040": {"labels": [4], "sentences": ["Great!"], "genders": [onehot(2)]},
}

MELD_CSV = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    '2,What?,Monica,surprise,negative,0,1,4,7,"00:21:01,927","00:21:03,261"\n'
    '1,"Oh my God, he\u2019s lost it.",Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"\n'
    '3,"Nothing\u2026 forget it.",Phoebe,neutral,neutral,0,2,4,7,"00:21:04,000","00:21:05,500"\n'
)

EMORY_CSV = (
    "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode,Start_Time,End_Time\n"
    "Coffee.,['Rachel Green'],Neutral,1,1,1,15,00:00:03.795,00:00:05.004\n"
    "Thanks.,\"['Joey Tribbiani', 'Ross Geller']\",Joyful,1,2,1,15,00:00:05.171,00:00:07.423\n"
)


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def split(items) -> tuple[list[Conversation], list[BadRecord]]:
    items = list(items)
    return [i for i in items if isinstance(i, Conversation)], [i for i in items if isinstance(i, BadRecord)]


def test_bioserc_json_speakers_labels_and_mojibake(tmp_path):
    path = write(tmp_path, "meld.valid.json", json.dumps(MELD_DOC))
    assert reader_for(path, Path(path).read_bytes()).name == "bioserc-json"
    convs = read_conversations(path)
    assert [c.id for c in convs] == ["1039", "1040"]
    first = convs[0]
    assert [u.speaker for u in first.utterances] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]
    assert [u.label for u in first.utterances] == ["sadness", "surprise", "neutral"]
    assert first.utterances[0].text == "Oh my God, he's lost it."
    assert first.utterances[0].original_text == "Oh my God, he\x92s lost it."
    assert first.utterances[2].text == "Nothing... forget it."
    assert first.metadata["label_set"] == "meld" and first.metadata["split"] == "valid"
    assert convs[1].utterances[0].speaker == "SPEAKER_2"


def test_iemocap_pseudo_names(tmp_path):
    doc = {"Ses03M_impro01": {"labels": [5, 2], "sentences": ["Hi.", "Hello."], "genders": ["M", "F"]}}
    convs = read_conversations(write(tmp_path, "iemocap.test.json", json.dumps(doc)))
    assert [u.speaker for u in convs[0].utterances] == ["ROBERT", "JENNIFER"]
    assert [u.label for u in convs[0].utterances] == ["frustrated", "neutral"]


def test_meld_csv_groups_orders_and_matches_json(tmp_path):
    csv_convs = read_conversations(write(tmp_path, "dev_sent_emo.csv", MELD_CSV))
    json_convs = read_conversations(write(tmp_path, "meld.valid.json", json.dumps(MELD_DOC)))
    (conv,) = csv_convs
    assert [u.speaker for u in conv.utterances] == ["Phoebe", "Monica", "Phoebe"]
    assert conv.utterances[0].start_ms == ((20 * 60) + 57) * 1000 + 256
    assert [u.text for u in conv.utterances] == [u.text for u in json_convs[0].utterances]
    assert [u.label for u in conv.utterances] == [u.label for u in json_convs[0].utterances]


def test_emorynlp_csv_first_listed_speaker(tmp_path):
    (conv,) = read_conversations(write(tmp_path, "emorynlp_dev_final.csv", EMORY_CSV))
    assert conv.id == "1_15_1"
    assert [u.speaker for u in conv.utterances] == ["Rachel Green", "Joey Tribbiani"]
    assert conv.utterances[1].metadata["speakers"] == ["Joey Tribbiani", "Ross Geller"]
    assert conv.utterances[0].start_ms == 3795


def test_gzip_directory_and_glob_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "meld.train.json.gz").write_bytes(gzip.compress(json.dumps(MELD_DOC).encode()))
    write(tmp_path / "a", "dev_sent_emo.csv", MELD_CSV)
    assert len(read_conversations(str(tmp_path / "a"))) == 3
    assert len(read_conversations(str(tmp_path / "a" / "*.gz"))) == 2
    with pytest.raises(FileNotFoundError, match="matches anything"):
        read_conversations(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("name", "content", "record", "field", "reason"),
    [
        ("meld.valid.json", '{"1": {"labels": [0], ', "file", None, "malformed JSON"),
        (
            "meld.valid.json",
            json.dumps({"7": {"labels": [0, 1], "sentences": ["a"], "genders": [onehot(0)]}}),
            "7",
            "labels",
            "lengths differ",
        ),
        (
            "meld.valid.json",
            json.dumps({"7": {"labels": [9], "sentences": ["a"], "genders": [onehot(0)]}}),
            "7",
            "labels[0]",
            "out of range",
        ),
        (
            "meld.valid.json",
            json.dumps({"7": {"labels": [], "sentences": [], "genders": []}}),
            "7",
            "utterances",
            "empty conversation",
        ),
        ("meld.valid.json", json.dumps({"7": {"labels": [0], "genders": [onehot(0)]}}), "7", "sentences", "missing"),
        (
            "meld.valid.json",
            json.dumps({"7": {"labels": [0], "sentences": [None], "genders": [onehot(0)]}}),
            "7",
            "text",
            "has no text",
        ),
        (
            "meld.valid.json",
            b'{"7": {"labels": [0], "sentences": ["caf\xe9"], "genders": [[1,0,0,0,0,0,0,0,0]]}}',
            "file",
            None,
            "not valid UTF-8",
        ),
        ("dev_sent_emo.csv", MELD_CSV.replace("surprise", "bored"), "0 (line 2)", "Emotion", "not in the meld"),
    ],
)
def test_bad_input_names_file_record_and_field(tmp_path, name, content, record, field, reason):
    path = write(tmp_path, name, content)
    convs, bad = split(read_items(path))
    assert not convs
    assert len(bad) == 1
    assert (bad[0].path, bad[0].record, bad[0].field) == (path, record, field)
    assert reason in bad[0].reason
    assert path in bad[0].message


def test_one_bad_conversation_does_not_lose_the_others(tmp_path):
    doc = dict(MELD_DOC, bad={"labels": [0, 0], "sentences": ["x"], "genders": [onehot(0)]})
    convs, bad = split(read_items(write(tmp_path, "meld.valid.json", json.dumps(doc))))
    assert [c.id for c in convs] == ["1039", "1040"]
    assert [b.record for b in bad] == ["bad"]


def test_ten_thousand_turn_conversation_is_rejected_with_location(tmp_path):
    n = 10_000
    doc = {"huge": {"labels": [0] * n, "sentences": ["hi"] * n, "genders": [onehot(i % 2) for i in range(n)]}}
    _, bad = split(read_items(write(tmp_path, "meld.train.json", json.dumps(doc))))
    assert (bad[0].record, bad[0].field, bad[0].utterances) == ("huge", "utterances", n)
    assert "10000 utterances exceeds" in bad[0].reason


def test_unknown_dataset_name_asks_for_dataset(tmp_path):
    path = write(tmp_path, "mystery.json", json.dumps(MELD_DOC))
    _, bad = split(read_items(path))
    assert "--dataset" in bad[0].reason
    assert len(read_conversations(path, dataset="meld")) == 2


def test_convert_reports_skips_and_exit_code(tmp_path, capsys):
    doc = dict(MELD_DOC, bad={"labels": [0, 0], "sentences": ["x"], "genders": [onehot(0)]})
    src = write(tmp_path, "meld.valid.json", json.dumps(doc))
    out, skipped = str(tmp_path / "out.jsonl"), str(tmp_path / "skipped.jsonl")
    assert main(["convert", src, "-o", out, "--skipped", skipped]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 record" in err and "record bad" in err
    assert main(["convert", src, "-o", out, "--allow-skips"]) == 0
    rows = list(read_jsonl(out))
    assert [r["id"] for r in rows] == ["1039", "1040"] and rows[0]["schema_version"] == 1
    assert Conversation.from_dict(rows[0]).utterances[0].label == "sadness"
    assert next(read_jsonl(skipped))["record"] == "bad"
    # canonical JSONL reads back as the same conversations
    assert [c.to_dict() for c in read_conversations(out)] == rows


def test_stats_prints_label_distribution(tmp_path, capsys):
    src = write(tmp_path, "meld.valid.json", json.dumps(MELD_DOC))
    assert main(["stats", src, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["conversations"] == 2 and stats["utterances"] == 4
    assert stats["labels"] == {"sadness": 1, "surprise": 1, "neutral": 1, "joy": 1}
    assert stats["conversation_speaker_pairs"] == 3
    assert main(["stats", src]) == 0
    assert "label distribution" in capsys.readouterr().out


@needs_raw
@pytest.mark.parametrize(
    ("json_file", "csv_file", "n_conv", "n_utt"),
    [
        ("meld/meld.valid.json", "meld-csv/dev_sent_emo.csv", 114, 1109),
        ("emorynlp/emorynlp.valid.json", "emorynlp-csv/emorynlp_dev_final.csv", 89, 954),
    ],
)
def test_real_json_and_csv_releases_agree(json_file, csv_file, n_conv, n_utt):
    report_j, report_c = ReadReport(), ReadReport()
    from_json = list(report_j.track(read_items(str(RAW / json_file))))
    from_csv = list(report_c.track(read_items(str(RAW / csv_file))))
    assert (report_j.conversations, report_j.utterances, report_j.skipped) == (n_conv, n_utt, [])
    assert (report_c.conversations, report_c.utterances, report_c.skipped) == (n_conv, n_utt, [])

    # MELD's CSV numbers dev dialogues from 0 while the JSON continues after train: align by order.
    def order(c):
        return (c.id.count("_"), *map(int, c.id.split("_")))

    for a, b in zip(sorted(from_json, key=order), sorted(from_csv, key=order), strict=True):
        if json_file.startswith("emorynlp"):
            assert a.id == b.id
        assert [u.text for u in a.utterances] == [u.text for u in b.utterances]
        assert [u.label for u in a.utterances] == [u.label for u in b.utterances]
        # the paper's SPEAKER_k is the order of first appearance of the (first-listed) real speaker
        order = {s: f"SPEAKER_{k}" for k, s in enumerate(b.speakers)}
        assert [u.speaker for u in a.utterances] == [order[u.speaker] for u in b.utterances]


@needs_raw
@pytest.mark.parametrize(("split", "n_conv", "n_utt"), [("train", 108, 5163), ("valid", 12, 647)])
def test_real_iemocap_splits_read_whole_with_the_paper_names_and_labels(split, n_conv, n_utt):
    path = RAW / "iemocap" / f"iemocap.{split}.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    report = ReadReport()
    convs = [c for c in report.track(read_items(str(path))) if isinstance(c, Conversation)]
    assert (report.conversations, report.utterances, report.skipped) == (n_conv, n_utt, [])
    for conv in convs:  # dyadic: the session's two pseudo-names, every label one of the six
        assert set(conv.speakers) == set(IEMOCAP_NAMES[conv.id[:5]].values())
        assert {u.label for u in conv.utterances} <= set(LABEL_SETS["iemocap"].labels)
        assert conv.metadata["label_set"] == "iemocap"
