"""Call-centre transcript readers (AWS TCA, Contact Lens, Google CCAI, Azure, JSONL): parsing, detection, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from bioserc.errors import BadRecord
from bioserc.readers import ReadReport, get_reader_class, read_items, reader_for
from bioserc.schema import Conversation, Utterance


FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"

FORMATS = ("bioserc-json", "meld-csv", "emorynlp-csv", "aws-tca", "contact-lens", "google-ccai", "azure-stt", "jsonl")


def write(tmp_path: Path, name: str, content: str | bytes | dict[str, Any]) -> str:
    if isinstance(content, dict):
        content = json.dumps(content, indent=2)
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def split(items) -> tuple[list[Conversation], list[BadRecord]]:
    items = list(items)
    return [i for i in items if isinstance(i, Conversation)], [i for i in items if isinstance(i, BadRecord)]


def read(path: str | Path, **options: Any) -> tuple[list[Conversation], list[BadRecord]]:
    return split(read_items(str(path), fmt="auto", **options))


def only(path: str | Path, **options: Any) -> Conversation:
    convs, bad = read(path, **options)
    assert not bad, [b.message for b in bad]
    assert len(convs) == 1
    return convs[0]


def column(conv: Conversation, attr: str) -> list[Any]:
    return [getattr(u, attr) for u in conv.utterances]


def detected(path: str | Path) -> str:
    return reader_for(str(path), Path(path).read_bytes()).name


# -- one realistic call per vendor --------------------------------------------------------------------------------


def test_aws_tca_billing_dispute():
    path = FIXTURES / "tca-billing-dispute-0142.json"
    assert detected(path) == "aws-tca"
    conv = only(path)
    assert conv.id == "tca-billing-dispute-0142"
    assert column(conv, "role") == ["agent", "customer"] * 3
    assert conv.speakers == ["AGENT", "CUSTOMER"]
    assert column(conv, "start_ms") == [410, 5320, 11500, 15600, 20800, 28600]
    assert column(conv, "end_ms")[-1] == 31920
    assert conv.utterances[0].text.startswith("Thank you for calling Northwind Telecom, my name is [PII]")
    assert [u.metadata["vendor_sentiment"] for u in conv.utterances] == [
        "NEUTRAL", "NEGATIVE", "NEUTRAL", "NEGATIVE", "POSITIVE", "POSITIVE"]
    assert conv.utterances[1].metadata["source_id"] == "9a41d2b0-55e3-4c8e-8f5b-2c7d1e0f3a02"
    assert conv.metadata["categories"] == ["billing-dispute"]
    assert conv.metadata["vendor_overall_sentiment"] == {"AGENT": 1.7, "CUSTOMER": -0.4}


def test_aws_tca_job_name_and_unknown_role(tmp_path):
    doc = load("tca-billing-dispute-0142.json")
    doc["JobName"] = "billing-job-7"
    assert only(write(tmp_path, "whatever.json", doc)).id == "billing-job-7"
    doc["Transcript"][3]["ParticipantRole"] = "CALLER"
    convs, bad = read(write(tmp_path, "whatever.json", doc))
    assert not convs and bad[0].field == "ParticipantRole" and bad[0].record == "billing-job-7 Transcript[3]"


def test_contact_lens_transfer_keeps_two_agents_apart():
    path = FIXTURES / "contact-lens-roaming-charge.json"
    assert detected(path) == "contact-lens"
    conv = only(path)
    assert conv.id == "7f3c2a10-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
    assert column(conv, "speaker") == [
        "SYSTEM", "AGENT", "CUSTOMER", "AGENT", "AGENT_2", "CUSTOMER", "AGENT_2", "CUSTOMER"]
    assert column(conv, "role") == ["system", "agent", "customer", "agent", "agent", "customer", "agent", "customer"]
    assert column(conv, "start_ms")[:3] == [0, 4200, 7800]
    assert conv.utterances[2].text.startswith("There's a \u00a3180 roaming charge on my bill")
    assert conv.utterances[5].metadata == {"source_id": "a1000000-0000-4000-8000-000000000006",
                                           "vendor_sentiment": "MIXED"}
    assert conv.metadata["language"] == "en-GB" and conv.metadata["channel"] == "VOICE"


def test_contact_lens_bot_supervisor_legacy_ids_and_unknown_participant(tmp_path):
    doc = {
        "Version": "1.1.0",
        "Participants": [{"ParticipantId": "p-bot", "ParticipantRole": "CUSTOM_BOT"},
                         {"ParticipantId": "p-sup", "ParticipantRole": "SUPERVISOR"}],
        "Transcript": [
            {"Id": "t1", "ParticipantId": "p-bot", "Content": "Say 'billing' or 'technical support'."},
            {"Id": "t2", "ParticipantId": "CUSTOMER", "Content": "Billing."},
            {"Id": "t3", "ParticipantId": "p-sup", "Content": "I'm the team lead, I'll take it from here."},
        ],
    }
    conv = only(write(tmp_path, "contact-99.json", doc))
    assert conv.id == "contact-99"
    assert column(conv, "role") == ["bot", "customer", "supervisor"]
    assert column(conv, "speaker") == ["BOT", "CUSTOMER", "SUPERVISOR"]
    doc["Transcript"][1]["ParticipantId"] = "p-nobody"
    convs, bad = read(write(tmp_path, "contact-99.json", doc))
    assert not convs and bad[0].field == "ParticipantId" and "p-nobody" in bad[0].reason


def test_google_ccai_bot_handoff_and_relative_times():
    path = FIXTURES / "ccai-late-fee-88213.json"
    assert detected(path) == "google-ccai"
    conv = only(path)
    assert conv.id == "ccai-late-fee-88213"
    assert column(conv, "role") == ["bot", "customer", "bot", "agent", "customer", "agent", "customer"]
    assert column(conv, "speaker") == ["BOT", "CUSTOMER", "BOT", "AGENT", "CUSTOMER", "AGENT", "CUSTOMER"]
    assert column(conv, "start_ms") == [0, 4500, 6200, 41000, 49750, 62000, 68400]
    assert conv.utterances[3].metadata == {"source_id": 3, "user_id": 3, "start_timestamp_usec": 1715688041000000}
    assert conv.metadata["categories"] == ["Late fee", "Escalation"]


def test_google_ccai_two_human_agents_and_string_timestamps(tmp_path):
    doc = {"conversation_info": {}, "entries": [
        {"text": "Hello.", "role": "AGENT", "user_id": 10, "start_timestamp_usec": "2000000"},
        {"text": "Hi, I need help.", "role": "CUSTOMER", "user_id": 20, "start_timestamp_usec": "3500000"},
        {"text": "Transferring you.", "role": "AGENT", "user_id": 11, "start_timestamp_usec": "5000000"},
    ]}
    conv = only(write(tmp_path, "t.json", doc))
    assert column(conv, "speaker") == ["AGENT", "CUSTOMER", "AGENT_2"]
    assert column(conv, "start_ms") == [0, 1500, 3000]


def test_azure_batch_sorted_by_offset_with_and_without_role_map():
    path = FIXTURES / "azure-batch-double-charge.json"
    assert detected(path) == "azure-stt"
    report = ReadReport()
    convs = list(report.track(read_items(str(path))))
    conv = convs[0]
    assert column(conv, "speaker") == ["CHANNEL_0", "CHANNEL_1"] * 3
    assert column(conv, "role") == [None] * 6
    assert column(conv, "start_ms") == [600, 4900, 9800, 14400, 21500, 27300]
    assert column(conv, "end_ms")[:2] == [4500, 9200]
    assert conv.utterances[1].text == "Hi, I've been charged twice for the same hotel booking."
    assert conv.utterances[1].metadata["source_id"] == 4  # its position in recognizedPhrases
    (nomatch,) = report.skipped
    assert nomatch.field == "recognitionStatus" and "NoMatch" in nomatch.reason and nomatch.utterances == 1
    assert nomatch.record == "azure-batch-double-charge recognizedPhrases[3]"
    assert report.utterances + nomatch.utterances == len(load(path.name)["recognizedPhrases"])

    mapped = read(path, role_map={"0": "agent", "1": "customer"})[0][0]
    assert column(mapped, "role") == ["agent", "customer"] * 3
    assert column(mapped, "speaker") == ["AGENT", "CUSTOMER"] * 3


def test_azure_fast_diarized_speakers():
    path = FIXTURES / "azure-fast-refund.json"
    assert detected(path) == "azure-stt"
    conv = only(path)
    assert column(conv, "speaker") == ["SPEAKER_1", "SPEAKER_2"] * 3
    assert column(conv, "start_ms") == [320, 4100, 11400, 17050, 19300, 25800]
    assert column(conv, "end_ms")[0] == 3720
    mapped = only(path, role_map={"1": "agent", "2": "customer"})
    assert column(mapped, "role") == ["agent", "customer"] * 3 and mapped.speakers == ["AGENT", "CUSTOMER"]


def test_azure_all_phrases_unrecognised_is_counted(tmp_path):
    doc = {"recognizedPhrases": [{"recognitionStatus": "InitialSilenceTimeout", "channel": 0, "offsetInTicks": 0.0},
                                 {"recognitionStatus": "NoMatch", "channel": 1, "offsetInTicks": 1e7}]}
    convs, bad = read(write(tmp_path, "silent.json", doc))
    assert not convs
    assert [b.utterances for b in bad] == [1, 1, 0]
    assert "empty conversation" in bad[-1].reason


# -- bad input, the same for every vendor ------------------------------------------------------------------------


def drop(key: str, *inner: Any):
    def mutate(turn: dict[str, Any]) -> None:
        for k in inner:
            turn = turn[k]
        turn.pop(key)
    return mutate


VENDORS = [
    pytest.param("aws-tca", "tca-billing-dispute-0142.json", "Transcript", drop("Content"), id="aws-tca"),
    pytest.param("contact-lens", "contact-lens-roaming-charge.json", "Transcript", drop("Content"), id="contact-lens"),
    pytest.param("google-ccai", "ccai-late-fee-88213.json", "entries", drop("text"), id="google-ccai"),
    pytest.param("azure-stt", "azure-batch-double-charge.json", "recognizedPhrases", drop("display", "nBest", 0),
                 id="azure-batch"),
    pytest.param("azure-stt", "azure-fast-refund.json", "phrases", drop("text"), id="azure-fast"),
]


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_gzip_input_reads_the_same(tmp_path, fmt, name, key, drop_text):
    data = (FIXTURES / name).read_bytes()
    gz = write(tmp_path, name + ".gz", gzip.compress(data))
    assert detected(gz) == fmt
    plain, zipped = read(FIXTURES / name)[0], read(gz)[0]
    assert [(c.id, c.utterances) for c in zipped] == [(c.id, c.utterances) for c in plain]  # id drops .json.gz


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_malformed_json_names_the_file(tmp_path, fmt, name, key, drop_text):
    path = write(tmp_path, name, (FIXTURES / name).read_bytes()[:-40])
    convs, bad = read(path)
    assert not convs and len(bad) == 1
    assert bad[0].path == path and bad[0].record == "file" and "malformed JSON" in bad[0].reason


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_missing_text_names_field_and_record(tmp_path, fmt, name, key, drop_text):
    doc = load(name)
    drop_text(doc[key][2])
    convs, bad = read(write(tmp_path, name, doc))
    assert not convs
    (missing,) = [b for b in bad if b.field == "text"]
    assert missing.record.endswith(f"{key}[2]") and "has no text" in missing.reason
    assert sum(b.utterances for b in bad) == len(doc[key])  # every input turn is accounted for exactly once


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_non_utf8_bytes_give_a_bad_record(tmp_path, fmt, name, key, drop_text):
    data = (FIXTURES / name).read_bytes()
    at = data.rindex(b"s")
    path = write(tmp_path, name, data[:at] + b"\xe9" + data[at + 1:])
    assert detected(path) == fmt
    convs, bad = read(path)
    assert not convs and len(bad) == 1 and "not valid UTF-8" in bad[0].reason


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_empty_transcript_is_a_bad_record(tmp_path, fmt, name, key, drop_text):
    doc = load(name)
    doc[key] = []
    path = write(tmp_path, name, doc)
    assert detected(path) == fmt
    convs, bad = read(path)
    assert not convs and len(bad) == 1 and "empty conversation" in bad[0].reason


# -- JSONL --------------------------------------------------------------------------------------------------------


def test_jsonl_rows_grouped_by_conversation_and_ordered_by_turn():
    path = FIXTURES / "utterance-rows.jsonl"
    assert detected(path) == "jsonl"
    first, second = read(path)[0]
    assert (first.id, second.id) == ("call-5001", "call-5002")
    assert column(first, "speaker") == ["CUSTOMER", "AGENT", "AGENT", "CUSTOMER"]
    assert column(first, "start_ms") == [0, 5200, 9600, 14800]
    assert column(first, "label") == ["angry", None, None, "happy"]
    assert first.utterances[0].text.startswith("You've taken my gym fee twice")
    assert first.utterances[0].metadata == {"vendor_sentiment": "NEGATIVE", "source_id": 0}
    assert column(second, "speaker") == ["A1", "C1"] and column(second, "role") == ["agent", "customer"]


def test_jsonl_bad_lines_cost_only_themselves(tmp_path):
    lines = (FIXTURES / "utterance-rows.jsonl").read_bytes().splitlines()
    lines[2:2] = [b'{"conversation_id": "call-5002", "text": ', b'{"conversation_id": "call-5002", "text": "caf\xe9"}']
    convs, bad = read(write(tmp_path, "rows.jsonl", b"\n".join(lines) + b"\n"))
    assert [len(c.utterances) for c in convs] == [4, 2]
    assert [(b.record, b.utterances) for b in bad] == [("line 3", 1), ("line 4", 1)]
    assert "malformed JSON" in bad[0].reason and "not valid UTF-8" in bad[1].reason


def test_jsonl_missing_text_and_mixed_turn_index(tmp_path):
    rows = [{"conversation_id": "c1", "turn_idx": 0, "speaker": "AGENT", "text": "Hi."},
            {"conversation_id": "c1", "turn_idx": 1, "speaker": "CUSTOMER"},
            {"conversation_id": "c2", "turn_idx": 0, "speaker": "AGENT", "text": "Hi."},
            {"conversation_id": "c2", "speaker": "CUSTOMER", "text": "Hello."}]
    convs, bad = read(write(tmp_path, "rows.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert not convs
    assert [(b.record, b.field, b.utterances) for b in bad] == [("c1 (line 2)", "text", 2),
                                                                 ("c2 (line 4)", "turn_idx", 2)]


@pytest.mark.parametrize("name", ["export.jsonl", "export.json", "export.jsonl.gz"])
def test_canonical_jsonl_round_trip(tmp_path, name):
    convs = read(FIXTURES)[0]
    assert len(convs) == 7
    convs.append(Conversation("typographic", [Utterance(0, "AGENT", "It\u2019s sorted\u2026", role="agent")]))
    text = "".join(c.to_json() + "\n" for c in convs).encode("utf-8")
    path = write(tmp_path, name, gzip.compress(text) if name.endswith(".gz") else text)
    assert detected(path) == "jsonl"
    assert read(path) == (convs, [])  # taken as written: not re-normalised, metadata kept


def test_canonical_jsonl_bad_conversation(tmp_path):
    good = Conversation("ok", [Utterance(0, "AGENT", "Hello.")]).to_dict()
    broken = Conversation("broken", [Utterance(0, "AGENT", "Hi."), Utterance(1, "CUSTOMER", "Yes.")]).to_dict()
    del broken["utterances"][1]["text"]
    convs, bad = read(write(tmp_path, "c.jsonl", "\n".join(json.dumps(d) for d in (good, broken))))
    assert [c.id for c in convs] == ["ok"]
    assert (bad[0].record, bad[0].field, bad[0].utterances) == ("broken (line 2)", "text", 2)


# -- detection never confuses formats -----------------------------------------------------------------------------


MELD_ROW = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode\n"
            "1,Hi.,Joey,joy,positive,0,0,1,1\n")
EMORY_ROW = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode\nHi.,['Joey'],Joyful,1,1,1,1\n"
CANONICAL = Conversation(  # a turn quoting vendor keys must not make our own output look like a vendor file
    "c", [Utterance(0, "AGENT", 'See the "Transcript": [ and "entries": [ fields', role="agent")],
    metadata={"source_format": "contact-lens"},
).to_json()
SAMPLES = [
    ("bioserc-json", "meld.test.json", {"1": {"labels": [0], "sentences": ["Hi."], "genders": [[1, 0]]}}),
    ("bioserc-json", "dialogues.json", {"d1": {"labels": [0], "sentences": ["Hi."], "genders": ["M"]}}),
    ("meld-csv", "dev_sent_emo.csv", MELD_ROW),
    ("emorynlp-csv", "emorynlp_dev_final.csv", EMORY_ROW),
    ("aws-tca", "job.json", {"JobStatus": "COMPLETED", "Transcript": [{"ParticipantRole": "AGENT", "Content": "Hi"}]}),
    ("contact-lens", "c.json", {"Participants": [], "Transcript": [{"ParticipantId": "AGENT", "Content": "Hi"}]}),
    ("google-ccai", "g.json", {"entries": [{"text": "Hi", "role": "AGENT", "user_id": 1}]}),
    ("azure-stt", "a.json", {"recognizedPhrases": [{"recognitionStatus": "Success", "channel": 0}]}),
    ("azure-stt", "f.json", {"combinedPhrases": [], "phrases": [{"offsetMilliseconds": 0, "text": "Hi"}]}),
    ("jsonl", "out.jsonl", CANONICAL + "\n"),
    ("jsonl", "out.json", CANONICAL + "\n" + CANONICAL + "\n"),
    ("jsonl", "rows.json", '{"conversation_id": "c", "speaker": "A", "text": "Hi"}\n'),
]


@pytest.mark.parametrize("expected, name, content", SAMPLES, ids=[f"{s[0]}:{s[1]}" for s in SAMPLES])
def test_exactly_one_reader_claims_each_format(tmp_path, expected, name, content):
    path = write(tmp_path, name, content)
    head = Path(path).read_text(encoding="utf-8")
    assert [f for f in FORMATS if get_reader_class(f).detect(path, head)] == [expected]
