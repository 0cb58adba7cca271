"""Call-centre transcript readers (AWS TCA and Transcribe, Contact Lens, Google CCAI ingest and API, Azure, calls CSV,
JSONL): parsing, detection, speaker vs channel roles, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from bioserc.cli import main
from bioserc.errors import BadRecord
from bioserc.jsonio import read_jsonl
from bioserc.readers import get_reader_class, read_items, reader_for, reader_names
from bioserc.readers.roles import parse_roles
from bioserc.schema import Conversation, Utterance


FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"

FORMATS = (
    "bioserc-json",
    "meld-csv",
    "emorynlp-csv",
    "calls-csv",
    "aws-tca",
    "aws-transcribe",
    "contact-lens",
    "google-ccai",
    "google-ccai-api",
    "azure-stt",
    "jsonl",
)


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
        "NEUTRAL",
        "NEGATIVE",
        "NEUTRAL",
        "NEGATIVE",
        "POSITIVE",
        "POSITIVE",
    ]
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
        "SYSTEM",
        "AGENT",
        "CUSTOMER",
        "AGENT",
        "AGENT_2",
        "CUSTOMER",
        "AGENT_2",
        "CUSTOMER",
    ]
    assert column(conv, "role") == ["system", "agent", "customer", "agent", "agent", "customer", "agent", "customer"]
    assert column(conv, "start_ms")[:3] == [0, 4200, 7800]
    assert conv.utterances[2].text.startswith("There's a \u00a3180 roaming charge on my bill")
    assert conv.utterances[5].metadata == {
        "source_id": "a1000000-0000-4000-8000-000000000006",
        "vendor_sentiment": "MIXED",
    }
    assert conv.metadata["language"] == "en-GB" and conv.metadata["channel"] == "VOICE"


def test_contact_lens_bot_supervisor_legacy_ids_and_unknown_participant(tmp_path):
    doc = {
        "Version": "1.1.0",
        "Participants": [
            {"ParticipantId": "p-bot", "ParticipantRole": "CUSTOM_BOT"},
            {"ParticipantId": "p-sup", "ParticipantRole": "SUPERVISOR"},
        ],
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
    doc = {
        "conversation_info": {},
        "entries": [
            {"text": "Hello.", "role": "AGENT", "user_id": 10, "start_timestamp_usec": "2000000"},
            {"text": "Hi, I need help.", "role": "CUSTOMER", "user_id": 20, "start_timestamp_usec": "3500000"},
            {"text": "Transferring you.", "role": "AGENT", "user_id": 11, "start_timestamp_usec": "5000000"},
        ],
    }
    conv = only(write(tmp_path, "t.json", doc))
    assert column(conv, "speaker") == ["AGENT", "CUSTOMER", "AGENT_2"]
    assert column(conv, "start_ms") == [0, 1500, 3000]


def test_azure_batch_sorted_by_offset_and_silence_counted_not_dead_lettered():
    path = FIXTURES / "azure-batch-double-charge.json"
    assert detected(path) == "azure-stt"
    conv = only(path)  # its NoMatch phrase used to be a bad record, which made `convert` exit 1
    assert column(conv, "speaker") == ["CHANNEL_0", "CHANNEL_1"] * 3
    assert column(conv, "role") == [None] * 6
    assert column(conv, "start_ms") == [600, 4900, 9800, 14400, 21500, 27300]
    assert column(conv, "end_ms")[:2] == [4500, 9200]
    assert conv.utterances[1].text == "Hi, I've been charged twice for the same hotel booking."
    assert conv.utterances[1].metadata["source_id"] == 4  # its position in recognizedPhrases
    assert conv.metadata["skipped_segments"] == {"NoMatch": 1}


def test_azure_stereo_channels_take_channel_roles_only():
    path = FIXTURES / "azure-batch-double-charge.json"
    mapped = only(path, channel_roles={"0": "agent", "1": "customer"})
    assert column(mapped, "role") == ["agent", "customer"] * 3
    assert column(mapped, "speaker") == ["AGENT", "CUSTOMER"] * 3
    # a speaker map is for diarized voices: channel 1 must not silently become the agent (it did with --role-map)
    unmapped = only(path, speaker_roles={"0": "customer", "1": "agent"})
    assert column(unmapped, "role") == [None] * 6
    assert column(unmapped, "speaker") == ["CHANNEL_0", "CHANNEL_1"] * 3


def test_azure_fast_diarized_speakers_take_speaker_roles_only(tmp_path):
    path = FIXTURES / "azure-fast-refund.json"
    assert detected(path) == "azure-stt"
    conv = only(path)
    assert column(conv, "speaker") == ["SPEAKER_1", "SPEAKER_2"] * 3  # plain ids, no "(?)" or role guess
    assert column(conv, "role") == [None] * 6
    assert column(conv, "start_ms") == [320, 4100, 11400, 17050, 19300, 25800]
    assert column(conv, "end_ms")[0] == 3720
    mapped = only(path, speaker_roles={"1": "agent", "2": "customer"})
    assert column(mapped, "role") == ["agent", "customer"] * 3 and mapped.speakers == ["AGENT", "CUSTOMER"]
    doc = load(path.name)
    for phrase in doc["phrases"]:
        phrase["channel"] = 0  # mono audio: every diarized phrase is on channel 0
    by_channel = only(write(tmp_path, path.name, doc), channel_roles={"0": "agent"})
    assert column(by_channel, "role") == [None] * 6 and by_channel.speakers == ["SPEAKER_1", "SPEAKER_2"]


def test_azure_silence_only_and_recognition_error(tmp_path):
    doc = {
        "recognizedPhrases": [
            {"recognitionStatus": "InitialSilenceTimeout", "channel": 0, "offsetInTicks": 0.0},
            {"recognitionStatus": "NoMatch", "channel": 1, "offsetInTicks": 1e7},
        ]
    }
    convs, bad = read(write(tmp_path, "silent.json", doc))
    assert not convs and len(bad) == 1
    assert bad[0].utterances == 0 and bad[0].reason.startswith("no speech")
    assert "1 InitialSilenceTimeout, 1 NoMatch" in bad[0].reason
    doc["recognizedPhrases"][1] = {"recognitionStatus": "Error", "channel": 1, "offsetInTicks": 1e7}
    doc["recognizedPhrases"].append(
        {"recognitionStatus": "Success", "channel": 0, "offsetInTicks": 2e7, "nBest": [{"display": "Hello?"}]}
    )
    convs, bad = read(write(tmp_path, "error.json", doc))
    assert [u.text for u in convs[0].utterances] == ["Hello?"]
    assert convs[0].metadata["skipped_segments"] == {"InitialSilenceTimeout": 1}
    (error,) = bad  # a recognition error lost a phrase: that one is dead-lettered
    assert (error.record, error.field, error.utterances) == ("error recognizedPhrases[1]", "recognitionStatus", 1)


@pytest.mark.parametrize(
    "name, key", [("azure-fast-refund.json", "phrases"), ("azure-batch-double-charge.json", "recognizedPhrases")]
)
def test_azure_long_call_detected_when_combined_transcript_fills_the_head(tmp_path, name, key):
    doc = load(name)
    combined = "combinedPhrases" if key == "phrases" else "combinedRecognizedPhrases"
    long = {combined: [{"display": "Thanks for holding. " * 4000, "text": "Thanks for holding. " * 4000}]}
    doc = {**{k: v for k, v in doc.items() if k not in (key, combined)}, **long, key: doc[key]}
    path = write(tmp_path, name, doc)
    assert Path(path).read_text().index(f'"{key}"') > 65536  # beyond the head that detection sees
    assert detected(path) == "azure-stt" and len(only(path).utterances) == 6


def test_convert_azure_with_silence_exits_0_and_maps_channels(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    path = str(FIXTURES / "azure-batch-double-charge.json")
    assert main(["convert", path, "-o", str(out), "--channel-roles", "0=agent,1=customer"]) == 0
    (conv,) = read_jsonl(str(out))
    assert conv["metadata"]["skipped_segments"] == {"NoMatch": 1}
    assert [u["role"] for u in conv["utterances"]] == ["agent", "customer"] * 3
    assert main(["convert", path, "-o", str(out), "--speaker-roles", "0=agent,1=customer"]) == 0
    (conv,) = read_jsonl(str(out))
    assert all("role" not in u for u in conv["utterances"])
    assert [u["speaker"] for u in conv["utterances"]] == ["CHANNEL_0", "CHANNEL_1"] * 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--role-map", "1=agent,2=customer"], "unrecognized arguments: --role-map"),
        (["--speaker-roles", "1=agent,2=boss"], "argument --speaker-roles: bad pair '2=boss'"),
        (["--channel-roles", "0agent"], "argument --channel-roles: bad pair '0agent'"),
    ],
)
def test_role_flags_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(FIXTURES / "azure-fast-refund.json"), "-o", str(tmp_path / "o.jsonl"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_parse_roles():
    assert parse_roles(" 1=Agent, 2 = customer,,", "--speaker-roles") == {"1": "agent", "2": "customer"}
    assert parse_roles("", "--channel-roles") == {}
    for text, bad in (("1=agent,2", "'2'"), ("=agent", "'=agent'"), ("1=agent,1=customer", "'1=customer'")):
        with pytest.raises(ValueError, match=f"--speaker-roles: bad pair {bad}"):
            parse_roles(text, "--speaker-roles")
    with pytest.raises(ValueError, match="channel_roles: 0='boss' is not a role"):
        get_reader_class("azure-stt")(channel_roles={0: "boss"})


def test_aws_transcribe_audio_segments_with_speaker_roles():
    path = FIXTURES / "transcribe-roaming-refund-5521.json"
    assert detected(path) == "aws-transcribe"
    conv = only(path)
    assert conv.id == "transcribe-roaming-refund-5521"
    assert column(conv, "speaker") == [
        "SPEAKER_0",
        "SPEAKER_1",
        "SPEAKER_0",
        "SPEAKER_0",
        "SPEAKER_1",
        "SPEAKER_0",
        "SPEAKER_1",
    ]
    assert column(conv, "role") == [None] * 7  # the output names no roles, and none are guessed
    assert column(conv, "start_ms")[:3] == [520, 5310, 11020] and column(conv, "end_ms")[-1] == 26860
    assert conv.utterances[1].text == "Hi. My bill went up by forty dollars this month and nobody told me why."
    assert conv.utterances[3].metadata == {"source_id": 3, "speaker_label": "spk_0"}
    mapped = only(path, speaker_roles={"spk_0": "agent", "spk_1": "customer"}, channel_roles={"ch_0": "customer"})
    assert mapped.speakers == ["AGENT", "CUSTOMER"]
    assert column(mapped, "role")[:3] == ["agent", "customer", "agent"]


def test_aws_transcribe_words_merge_consecutive_segments_of_one_speaker(tmp_path):
    doc = load("transcribe-roaming-refund-5521.json")
    del doc["results"]["audio_segments"]
    for item in doc["results"]["items"]:
        item.pop("speaker_label")  # older outputs: the speaker of a word is only in speaker_labels.segments
    conv = only(write(tmp_path, "job.json", doc))
    assert column(conv, "speaker") == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0", "SPEAKER_1", "SPEAKER_0", "SPEAKER_1"]
    assert conv.utterances[2].text == "I'm sorry to hear that. Let me pull up your account."
    assert (conv.utterances[2].start_ms, conv.utterances[2].end_ms) == (11020, 15190)
    assert conv.utterances[0].text == "Thanks for calling Contoso Mobile, this is Priya. How can I help you today?"
    assert conv.utterances[2].metadata == {"source_id": 34, "speaker_label": "spk_0"}


def test_aws_transcribe_channel_identification_takes_channel_roles(tmp_path):
    doc = load("transcribe-roaming-refund-5521.json")
    results = doc["results"]
    del results["audio_segments"], results["speaker_labels"]
    channels: dict[str, list[dict[str, Any]]] = {"ch_0": [], "ch_1": []}
    for item in results["items"]:
        item["channel_label"] = "ch_" + item.pop("speaker_label")[-1]
        channels[item["channel_label"]].append(dict(item))
        item.pop("channel_label")  # as in older outputs: the channel is only in channel_labels
    results["channel_labels"] = {
        "number_of_channels": 2,
        "channels": [{"channel_label": k, "items": v} for k, v in channels.items()],
    }
    path = write(tmp_path, "stereo.json", doc)
    conv = only(path)
    assert column(conv, "speaker")[:3] == ["CHANNEL_0", "CHANNEL_1", "CHANNEL_0"] and len(conv.utterances) == 6
    assert only(path, speaker_roles={"spk_0": "agent", "spk_1": "customer"}).speakers == ["CHANNEL_0", "CHANNEL_1"]
    mapped = only(path, channel_roles={"ch_0": "agent", "ch_1": "customer"})
    assert mapped.speakers == ["AGENT", "CUSTOMER"] and column(mapped, "role")[:2] == ["agent", "customer"]
    assert mapped.utterances[1].metadata["channel_label"] == "ch_1"
    overlap = [  # the caller starts before the agent's sentence ends: each mark follows its own channel's word
        {
            "type": "pronunciation",
            "start_time": "0.0",
            "end_time": "0.4",
            "channel_label": "ch_0",
            "alternatives": [{"content": "Hello"}],
        },
        {
            "type": "pronunciation",
            "start_time": "0.3",
            "end_time": "0.5",
            "channel_label": "ch_1",
            "alternatives": [{"content": "Hi"}],
        },
        {"type": "punctuation", "channel_label": "ch_0", "alternatives": [{"content": "."}]},
        {"type": "punctuation", "channel_label": "ch_1", "alternatives": [{"content": "!"}]},
    ]
    doc = {"jobName": "overlap", "results": {"transcripts": [{"transcript": "Hello. Hi!"}], "items": overlap}}
    assert column(only(write(tmp_path, "overlap.json", doc)), "text") == ["Hello.", "Hi!"]


def test_aws_transcribe_empty_segment_failed_job_and_no_speakers(tmp_path):
    doc = load("transcribe-roaming-refund-5521.json")
    doc["results"]["audio_segments"][4]["transcript"] = ""
    conv = only(write(tmp_path, "job.json", doc))
    assert len(conv.utterances) == 6 and conv.metadata["skipped_segments"] == {"empty": 1}
    doc["status"] = "FAILED"
    bad = read(write(tmp_path, "job.json", doc))[1]
    assert (bad[0].record, bad[0].field) == ("transcribe-roaming-refund-5521", "status")
    doc["status"] = "COMPLETED"
    doc["results"]["audio_segments"][1].pop("speaker_label")
    bad = read(write(tmp_path, "job.json", doc))[1]
    assert (bad[0].record, bad[0].field) == ("transcribe-roaming-refund-5521 audio_segments[1]", "speaker_label")
    assert bad[0].utterances == 7


def test_google_ccai_api_participant_roles_and_word_times():
    path = FIXTURES / "ccai-api-double-debit.json"
    assert detected(path) == "google-ccai-api"
    conv = only(path)
    assert conv.id == "8f2d61c0b7"  # the last segment of the resource name
    assert column(conv, "role") == ["bot", "customer", "bot", "agent", "customer", "agent", "customer"]
    assert column(conv, "speaker") == ["BOT", "CUSTOMER", "BOT", "AGENT", "CUSTOMER", "AGENT", "CUSTOMER"]
    assert column(conv, "start_ms")[:4] == [400, 4200, 8100, 19600]
    assert column(conv, "end_ms")[0] == 4290
    assert conv.utterances[4].metadata == {
        "source_id": 4,
        "channel_tag": 2,
        "confidence": 0.86,
        "vendor_sentiment": -0.8,
    }
    assert conv.metadata["language"] == "en-GB"


def test_google_ccai_api_channel_tags_take_channel_roles(tmp_path):
    doc = load("ccai-api-double-debit.json")
    del doc["name"]
    segments = doc["transcript"]["transcriptSegments"]
    for seg in segments:
        seg["segmentParticipant"] = {"role": "ROLE_UNSPECIFIED"}
    segments[0]["text"] = " "
    path = write(tmp_path, "call-4410.json", doc)
    conv = only(path)
    assert conv.id == "call-4410" and conv.metadata["skipped_segments"] == {"empty": 1}
    assert column(conv, "speaker")[:3] == ["CHANNEL_2", "CHANNEL_1", "CHANNEL_1"]
    assert column(conv, "role") == [None] * 6
    assert column(only(path, speaker_roles={"1": "agent"}), "role") == [None] * 6
    mapped = only(path, channel_roles={"1": "agent", "2": "customer"})
    assert column(mapped, "speaker")[:3] == ["CUSTOMER", "AGENT", "AGENT"]
    segments[2]["words"][0]["startOffset"] = "8.1 s"
    bad = read(write(tmp_path, "call-4410.json", doc))[1]
    assert (bad[0].record, bad[0].field) == ("call-4410 transcriptSegments[2]", "words[0].startOffset")


def test_calls_csv_groups_rows_and_reads_quoted_cells():
    path = FIXTURES / "calls-export.csv"
    assert detected(path) == "calls-csv"
    first, second = read(path)[0]
    assert (first.id, second.id) == ("call-7001", "call-7002")
    assert column(first, "speaker") == ["A-204", "C-88410", "A-204", "C-88410"]
    assert column(first, "role") == ["agent", "customer", "agent", "customer"]
    assert column(first, "start_ms") == [0, 3900, 9800, 14500] and column(first, "end_ms")[1] == 9250
    assert first.utterances[1].original_text.endswith(
        "every evening this week, and\nI work from home, so this is a real problem."
    )
    assert first.utterances[3].text == 'Thank you, "finally" some progress!'
    assert first.utterances[0].metadata == {"queue": "billing"}
    assert column(second, "text") == [
        "Litware Broadband support. How can I help?",
        "The router light is flashing orange.",
    ]


def test_calls_csv_speaker_roles_ms_columns_and_bad_rows(tmp_path):
    text = (
        "Conversation ID,Speaker,Text,Start_ms,End_ms\n"
        "c1,agent-7,Hello.,0,900\n"
        'c1,cust-3,"Hi, my card is blocked.",1000,2500\n'
        "c2,agent-7,Good morning.,0\n"
        "c3,agent-7,Hello.,0,800\n"
        "c3,cust-9,Hi.,1.5,2000\n"
    )
    path = write(tmp_path, "export.csv", text)
    assert detected(path) == "calls-csv"
    convs, bad = read(path, speaker_roles={"agent-7": "agent", "cust-3": "customer"})
    assert [c.id for c in convs] == ["c1"]
    assert column(convs[0], "role") == ["agent", "customer"] and column(convs[0], "end_ms") == [900, 2500]
    assert [(b.path, b.record, b.field) for b in bad] == [(path, "line 4", None), (path, "c3 (line 6)", "start_ms")]
    assert "wrong number of columns" in bad[0].reason and "'1.5' is not an integer" in bad[1].reason
    assert (bad[0].utterances, bad[1].utterances) == (1, 2)
    bad_role = write(tmp_path, "roles.csv", "conversation_id,speaker,role,text\nc1,A,caller,Hello.\n")
    (error,) = read(bad_role)[1]
    assert (error.record, error.field) == ("c1 (line 2)", "role") and "'caller' is not one of" in error.reason


UNSUPPORTED = [
    ("random.json", {"results": {"score": 0.5}, "meta": {"Transcript": "x"}}),
    ("transcript.json", {"transcript": {"text": "hello"}, "entries": {"a": 1}}),
    ("log.json", {"entries": [{"user_id": 7, "message": "login"}]}),
    ("list.json", [{"speaker": "A", "text": "Hi"}]),
    ("notes.txt", "call notes: customer angry about bill\n"),
    ("other.csv", "id,message\n1,hello\n"),
]


@pytest.mark.parametrize("name, content", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_format_lists_supported_ones(tmp_path, name, content):
    path = write(tmp_path, name, json.dumps(content) if not isinstance(content, str) else content)
    head = Path(path).read_text(encoding="utf-8")
    assert [f for f in FORMATS if get_reader_class(f).detect(path, head)] == []  # no reader guesses, then fails
    convs, bad = read(path)
    assert not convs and len(bad) == 1 and (bad[0].record, bad[0].field) == ("file", None)
    assert bad[0].reason.startswith("unsupported format")
    assert "supported formats: " + ", ".join(reader_names()) in bad[0].reason
    with pytest.raises(ValueError, match="unsupported format"):
        reader_for(path, Path(path).read_bytes())


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
    pytest.param(
        "azure-stt",
        "azure-batch-double-charge.json",
        "recognizedPhrases",
        drop("display", "nBest", 0),
        id="azure-batch",
    ),
    pytest.param("azure-stt", "azure-fast-refund.json", "phrases", drop("text"), id="azure-fast"),
    pytest.param(
        "aws-transcribe",
        "transcribe-roaming-refund-5521.json",
        "results.audio_segments",
        drop("transcript"),
        id="aws-transcribe",
    ),
    pytest.param(
        "google-ccai-api",
        "ccai-api-double-debit.json",
        "transcript.transcriptSegments",
        drop("text"),
        id="google-ccai-api",
    ),
]


def turns(doc: dict[str, Any], key: str) -> list[Any]:
    """The list of turns at a dotted key ("results.audio_segments")."""
    for part in key.split("."):
        doc = doc[part]
    return doc


def set_turns(doc: dict[str, Any], key: str, value: list[Any]) -> None:
    *outer, last = key.split(".")
    for part in outer:
        doc = doc[part]
    doc[last] = value


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
    drop_text(turns(doc, key)[2])
    convs, bad = read(write(tmp_path, name, doc))
    assert not convs
    (missing,) = [b for b in bad if b.field == "text"]
    assert missing.record.endswith(f"{key.split('.')[-1]}[2]") and "has no text" in missing.reason
    speech = [t for t in turns(doc, key) if t.get("recognitionStatus", "Success") == "Success"]
    assert sum(b.utterances for b in bad) == len(speech)  # every spoken input turn is accounted for exactly once


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_non_utf8_bytes_give_a_bad_record(tmp_path, fmt, name, key, drop_text):
    data = (FIXTURES / name).read_bytes()
    at = data.rindex(b"s")
    path = write(tmp_path, name, data[:at] + b"\xe9" + data[at + 1 :])
    assert detected(path) == fmt
    convs, bad = read(path)
    assert not convs and len(bad) == 1 and "not valid UTF-8" in bad[0].reason


@pytest.mark.parametrize("fmt, name, key, drop_text", VENDORS)
def test_empty_transcript_is_a_bad_record(tmp_path, fmt, name, key, drop_text):
    doc = load(name)
    set_turns(doc, key, [])
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
    rows = [
        {"conversation_id": "c1", "turn_idx": 0, "speaker": "AGENT", "text": "Hi."},
        {"conversation_id": "c1", "turn_idx": 1, "speaker": "CUSTOMER"},
        {"conversation_id": "c2", "turn_idx": 0, "speaker": "AGENT", "text": "Hi."},
        {"conversation_id": "c2", "speaker": "CUSTOMER", "text": "Hello."},
    ]
    convs, bad = read(write(tmp_path, "rows.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert not convs
    assert [(b.record, b.field, b.utterances) for b in bad] == [
        ("c1 (line 2)", "text", 2),
        ("c2 (line 4)", "turn_idx", 2),
    ]


@pytest.mark.parametrize("name", ["export.jsonl", "export.json", "export.jsonl.gz"])
def test_canonical_jsonl_round_trip(tmp_path, name):
    convs = read(FIXTURES)[0]
    assert len(convs) == 11
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


MELD_ROW = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode\n"
    "1,Hi.,Joey,joy,positive,0,0,1,1\n"
)
EMORY_ROW = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode\nHi.,['Joey'],Joyful,1,1,1,1\n"
CANONICAL = Conversation(  # a turn quoting vendor keys must not make our own output look like a vendor file
    "c",
    [Utterance(0, "AGENT", 'See the "Transcript": [ and "entries": [ fields', role="agent")],
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
    ("calls-csv", "calls.csv", "conversation_id,speaker,text\nc1,A,Hi\n"),
    ("calls-csv", "export.csv", "\ufeffConversation ID,Speaker,Role,Text,Start,End\r\n"),
    ("aws-transcribe", "t.json", {"jobName": "j", "results": {"transcripts": [{"transcript": "Hi"}], "items": []}}),
    ("google-ccai-api", "c.json", {"name": "projects/p/conversations/1", "transcript": {"transcriptSegments": []}}),
    ("jsonl", "out.jsonl", CANONICAL + "\n"),
    ("jsonl", "out.json", CANONICAL + "\n" + CANONICAL + "\n"),
    ("jsonl", "rows.json", '{"conversation_id": "c", "speaker": "A", "text": "Hi"}\n'),
]


@pytest.mark.parametrize("expected, name, content", SAMPLES, ids=[f"{s[0]}:{s[1]}" for s in SAMPLES])
def test_exactly_one_reader_claims_each_format(tmp_path, expected, name, content):
    path = write(tmp_path, name, content)
    head = Path(path).read_text(encoding="utf-8")
    assert [f for f in FORMATS if get_reader_class(f).detect(path, head)] == [expected]
