"""The labeling pipeline (`bioserc label`) on the demo archive plus broken inputs, with a tiny random BiosercBert.

    /work/venv/bin/python -m pytest -q tests/test_label_pipeline.py

No download: the encoder is a random 16-wide BertModel with a WordPiece vocab written here; bios are a small file or
come from a scripted LLM backend. The pipeline runs on Beam's in-process runner.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from bioserc.artifacts import write_manifest
from bioserc.bios.base import Generation, LLMBackend
from bioserc.jsonio import read_jsonl
from bioserc.labels import LABEL_SETS
from bioserc.readers import read_items
from bioserc.schema import Conversation


pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "transcripts"
MELD = list(LABEL_SETS["meld"].labels)
FAULTY = "tca-cancellation-4410"  # the conversation the wrapped classifier fails on


def make_artifact(root: Path) -> str:
    """A random BiosercBert saved as an exported artifact (weights + manifest.json), as training's best/ is."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from bioserc.models import BiosercBert, BiosercBertConfig

    enc = root / "encoder"
    enc.mkdir(parents=True)
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ":",
        "agent",
        "customer",
        "is",
        "calm",
        "angry",
        "thank",
        "you",
        "sorry",
        "the",
        "bill",
        "card",
        "fee",
        "okay",
        "no",
        "yes",
        "i",
        "my",
        "a",
        "and",
    ]
    (enc / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(enc / "vocab.txt")).save_pretrained(enc)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
        )
    ).save_pretrained(enc)
    model = BiosercBert.from_encoder(
        BiosercBertConfig(encoder=str(enc), bio_mode="mlp", max_length=48, bio_max_length=16, heads=2)
    )
    out = root / "model"
    model.save_pretrained(str(out))
    write_manifest(
        str(out), "pytorch-classifier", model_family="bioserc-bert", label_set="meld", labels=MELD, bio_mode="mlp"
    )
    return str(out)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("label")
    bad = root / "bad"
    (bad / "broken.json").parent.mkdir(parents=True)
    (bad / "broken.json").write_text('{"JobStatus": "COMPLETED", "Transcript": [ {"Content": "hi"')  # unknown count
    write_json(
        bad / "tca-bad-role.json",
        {
            "JobStatus": "COMPLETED",
            "Transcript": [  # a bad turn costs its call: 3
                {"Content": "Hello.", "ParticipantRole": "AGENT"},
                {"Content": "Hi.", "ParticipantRole": "ROBOT"},
                {"Content": "Bye.", "ParticipantRole": "CUSTOMER"},
            ],
        },
    )
    rows = [
        {"conversation_id": "row-call", "turn_idx": i, "speaker": s, "text": t}
        for i, (s, t) in enumerate([("AGENT", "Hello, how can I help?"), ("CUSTOMER", "My card is blocked.")])
    ]
    (bad / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn line\n")  # 2 good + 1 lost
    shutil.copy(DEMO / "ccai-moving-house-6631.json", bad / "ccai-moving-house-6631.json")  # identical duplicate
    clash = Conversation.from_dict(
        {
            "id": "tca-happy-renewal-7302",
            "utterances": [  # same id, different call
                {"index": 0, "speaker": "AGENT", "text": "Hello."},
                {"index": 1, "speaker": "CUSTOMER", "text": "Hi."},
            ],
        }
    )
    (bad / "clash.jsonl").write_text(clash.to_json() + "\n")
    bios = root / "bios.jsonl"
    bill, moving = "tca-billing-overcharge-2211", "ccai-moving-house-6631"
    bios.write_text(
        "\n".join(
            [
                json.dumps({"conversation_id": bill, "speaker": "AGENT", "bio": "AGENT is calm."}),
                json.dumps({"conversation_id": bill, "speaker": "CUSTOMER", "bio": "CUSTOMER is angry."}),
                json.dumps({"conversation_id": moving, "speaker": "CUSTOMER", "bio": "", "error": "degenerate"}),
                "{not json",
            ]
        )
        + "\n"
    )
    items = list(read_items([str(DEMO), str(bad)]))
    total = sum(len(i.utterances) if isinstance(i, Conversation) else i.utterances for i in items)
    assert total == 76 + 3 + 2 + 1 + 8 + 2  # demo + bad role + rows (+1 torn line) + duplicate + clash
    return {
        "root": root,
        "model": make_artifact(root),
        "inputs": [str(DEMO), str(bad)],
        "bios": str(bios),
        "total": total,
    }


def faulty(monkeypatch, conversation_id: str) -> None:
    """Wrap the loaded classifier so that predict raises whenever a batch holds `conversation_id`."""
    from bioserc.pipelines import classifier_handler

    real = classifier_handler.load_classifier

    class Faulty:
        def __init__(self, inner):
            self.inner, self.labels, self.model_id, self.bio_mode = inner, inner.labels, inner.model_id, inner.bio_mode

        def predict(self, conversations, bios=None, **kwargs):
            if any(c.id == conversation_id for c in conversations):
                raise RuntimeError(f"simulated fault on {conversation_id}")
            return self.inner.predict(conversations, bios, **kwargs)

    monkeypatch.setattr(
        classifier_handler,
        "load_classifier",
        lambda path, device="cpu", threads=None, int8="auto": Faulty(real(path, device, threads, int8)),
    )


def outputs(out: Path) -> dict:
    return {
        "rows": list(read_jsonl(str(out / "utterances.jsonl"))),
        "dead": list(read_jsonl(str(out / "dead_letter.jsonl"))),
        "convs": {c["conversation_id"]: c for c in read_jsonl(str(out / "conversations.jsonl"))},
    }


def label(setup: dict, out: Path, *extra: str):
    from bioserc.pipelines import label_pipeline

    argv = [
        *setup["inputs"],
        "-o",
        str(out),
        "--model",
        setup["model"],
        "--bios",
        setup["bios"],
        "--conversations-per-batch",
        "4",
        *extra,
    ]
    return label_pipeline.run(argv)


@pytest.fixture(scope="module")
def first_run(setup):
    mp = pytest.MonkeyPatch()
    faulty(mp, FAULTY)
    out = setup["root"] / "out"
    try:
        outcome = label(setup, out)
    finally:
        mp.undo()
    return {"out": out, "counters": outcome.counters, "outcome": outcome, **outputs(out)}


def test_every_utterance_is_labelled_or_dead_lettered_exactly_once(setup, first_run):
    rows, dead, c = first_run["rows"], first_run["dead"], first_run["counters"]
    keys = [(r["conversation_id"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys))
    dead_utts = sum(d["utterances"] for d in dead)
    assert len(rows) + dead_utts == setup["total"]
    assert c["utterances_labeled"] == len(rows) and c["utterances_dead_lettered"] == dead_utts
    assert c["utterances_read"] == c["utterances_labeled"] + 8 + 8 + 8 + 2  # fault, duplicate, both clashing copies
    assert first_run["outcome"].problems == []
    assert first_run["outcome"].exit_code == 1  # dead letters without --allow-skips
    # the classifier fault cost exactly its own conversation, one dead letter per utterance, with the reason
    faults = [d for d in dead if d["stage"] == "classify"]
    assert {d["conversation_id"] for d in faults} == {FAULTY} and len(faults) == 8
    assert all("simulated fault" in d["reason"] and json.loads(d["raw"])["text"] for d in faults)
    assert FAULTY not in {r["conversation_id"] for r in rows} and "row-call" in {r["conversation_id"] for r in rows}
    reasons = Counter((d["stage"], d["record"]) for d in dead if d["stage"] != "classify")
    assert reasons[("read", "tca-happy-renewal-7302")] == 2 and reasons[("read", "ccai-moving-house-6631")] == 1
    assert c["conversations_duplicated"] == 3  # the copies set aside
    assert c["bio_rows_unreadable"] == 1 and c["conversations_failed"] == 1
    assert {"read-bios"} <= {d["stage"] for d in dead}


def test_a_failing_conversation_in_a_batch_costs_only_itself(setup, monkeypatch):
    from bioserc.pipelines.classifier_handler import ClassifierModelHandler, LabelRequest

    faulty(monkeypatch, FAULTY)
    wanted = (FAULTY, "tca-happy-renewal-7302", "ccai-moving-house-6631")
    convs = [c for c in read_items([str(DEMO)]) if c.id in wanted]
    handler = ClassifierModelHandler(setup["model"], "cpu")
    outcomes = handler.run_inference([LabelRequest(c) for c in convs], handler.load_model())
    assert [o.request.conversation.id for o in outcomes] == [c.id for c in convs]
    for o in outcomes:
        failed = o.request.conversation.id == FAULTY
        assert (o.error is not None) == failed and (o.predictions is None) == failed
        assert failed or len(o.predictions) == len(o.request.conversation.utterances)


def test_rows_carry_labels_probabilities_and_bios(first_run):
    rows = first_run["rows"]
    for r in rows:
        assert r["label"] in MELD and set(r["probs"]) == set(MELD)
        assert abs(sum(r["probs"].values()) - 1) < 1e-4 and r["probs"][r["label"]] == max(r["probs"].values())
    by_key = {(r["conversation_id"], r["speaker"]): r["bio"] for r in rows}
    assert by_key[("tca-billing-overcharge-2211", "CUSTOMER")] == "CUSTOMER is angry."
    assert by_key[("ccai-moving-house-6631", "CUSTOMER")] is None  # its bio row had an error
    assert len({r["model_id"] for r in rows}) == 1
    speakers = sum(len(c["speakers"]) for c in first_run["convs"].values()) + 2  # + the failed call's two
    assert first_run["counters"]["speakers_without_bio"] == speakers - 2  # two bios in the file were usable


def test_parquet_matches_jsonl(first_run):
    import pyarrow.parquet as pq

    table = pq.read_table(first_run["out"] / "utterances.parquet")
    assert table.num_rows == len(first_run["rows"])
    got = {(r["conversation_id"], r["index"]): r for r in table.to_pylist()}
    for r in first_run["rows"]:
        p = got[(r["conversation_id"], r["index"])]
        assert p["label"] == r["label"] and p["text"] == r["text"] and dict(p["probs"]) == pytest.approx(r["probs"])


def test_conversation_summaries_follow_the_rows(first_run):
    rows, convs = first_run["rows"], first_run["convs"]
    assert set(convs) == {r["conversation_id"] for r in rows}
    s = convs["tca-billing-overcharge-2211"]
    mine = sorted((r for r in rows if r["conversation_id"] == s["conversation_id"]), key=lambda r: r["index"])
    assert s["utterances"] == len(mine) == 12
    assert s["emotion_counts"] == dict(Counter(r["label"] for r in mine))
    for info in s["speakers"]:
        trajectory = [[r["index"], r["label"]] for r in mine if r["speaker"] == info["speaker"]]
        assert info["trajectory"] == trajectory
        counts = Counter(label for _, label in trajectory)
        assert counts[info["dominant_emotion"]] == max(counts.values())
    outage = convs["3d1f5c2a-8b7e-4c6d-9a0f-1e2d3c4b5a69"]["speakers"]  # Contact Lens: a transfer to a 2nd agent
    assert [s["speaker"] for s in outage] == ["SYSTEM", "AGENT", "CUSTOMER", "AGENT_2"]


def test_report_and_run_record(first_run):
    page = (first_run["out"] / "report.html").read_text()
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(charts) == 3 + 2 * len(first_run["convs"])  # label mix, histogram, distribution + two per call
    for chart in charts:
        ElementTree.fromstring(chart)  # well-formed: transcript text inside is escaped
    # one point per labelled utterance of the plotted calls, in each call's label and valence charts
    for kind in ("emotion trajectory", "valence trajectory"):
        assert sum(c.count("<circle") for c in charts if kind in c) == first_run["counters"]["utterances_labeled"]
    assert "tca-billing-overcharge-2211" in page and "utterances_labeled" in page
    info = json.loads((first_run["out"] / "run.json").read_text())
    assert info["counters"] == first_run["counters"] and info["labels"] == MELD and info["bios"] == "file"
    assert info["version"] and info["duration_s"] > 0 and info["exit_code"] == 1


ANALYTICS = ("conversations.jsonl", "calls.csv", "calls.parquet", "archive.json")


def summarized_copy(out: Path, target: Path, *extra: str) -> Path:
    """A copy of a label run's folder in which `bioserc summarize` rewrote the analytics outputs."""
    from bioserc import cli

    shutil.copytree(out, target, ignore=shutil.ignore_patterns(".bioserc.lock", *ANALYTICS, "report.html"))
    assert cli.main(["summarize", str(target), *extra]) == 0
    return target


def test_analytics_outputs_account_for_every_row(first_run):
    import csv

    import pyarrow.parquet as pq

    out, rows, convs = first_run["out"], first_run["rows"], first_run["convs"]
    archive = json.loads((out / "archive.json").read_text())
    assert archive["utterances"] == len(rows) and archive["labels"] == dict(
        sorted(Counter(r["label"] for r in rows).items())
    )
    for role, totals in archive["roles"].items():
        mine = [r for r in rows if (r["role"] or "unknown") == role]
        assert totals["labels"] == dict(sorted(Counter(r["label"] for r in mine).items()))
    assert archive["calls"] == len(convs) and sum(archive["call_scores"]["histogram"]) == len(convs)
    assert archive["thresholds"]["negative"] == 0.5 and len(archive["review"]) <= 20
    with open(out / "calls.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    order = [c["conversation_id"] for c in read_jsonl(str(out / "conversations.jsonl"))]
    assert [r["conversation_id"] for r in table] == order  # one row per call, in conversations.jsonl's order
    parquet = pq.read_table(out / "calls.parquet").to_pylist()
    assert [r["conversation_id"] for r in parquet] == order
    for row, conv in zip(parquet, (convs[i] for i in order), strict=True):
        assert row["call_score"] == conv["analytics"]["call_score"] and row["utterances"] == conv["utterances"]
    assert first_run["outcome"].problems == []


def test_summarize_reproduces_the_label_outputs_byte_for_byte(first_run, tmp_path):
    again = summarized_copy(first_run["out"], tmp_path / "again")
    for name in ANALYTICS:
        assert (again / name).read_bytes() == (first_run["out"] / name).read_bytes(), name
    other = summarized_copy(
        first_run["out"], tmp_path / "other", "--negative-threshold", "0.01", "--review-calls", "2"
    )
    archive = json.loads((other / "archive.json").read_text())
    assert archive["thresholds"]["negative"] == 0.01 and len(archive["review"]) == 2  # new thresholds, no model


def test_a_lost_archive_partial_is_an_accounting_mismatch(setup, tmp_path, monkeypatch):
    from bioserc.pipelines import outputs

    real_write, dropped = outputs.JsonSink.write, []

    def lossy(self, record):
        if record[0] == outputs.ARCHIVE_PARTS and not dropped:
            dropped.append(record)
            return
        real_write(self, record)

    monkeypatch.setattr(outputs.JsonSink, "write", lossy)
    outcome = label(setup, tmp_path / "out", "--report-calls", "0")
    assert dropped and any(p.startswith("archive.json counts") for p in outcome.problems)
    assert outcome.exit_code == 1 and outcome.where != outcome.output  # kept aside, nothing promoted


def test_rerun_with_skip_existing_labels_only_the_rest_then_a_plain_rerun_replaces(setup, first_run, tmp_path):
    out = first_run["out"]
    before = {(r["conversation_id"], r["index"]): r for r in first_run["rows"]}
    c = label(setup, out, "--skip-existing").counters
    assert c["conversations_skipped_existing"] == len(first_run["convs"]) + 1  # + the identical duplicate copy
    assert c["conversations_labeled"] == 1 and c["utterances_labeled"] == 8
    assert c["utterances_labeled"] + c["utterances_dead_lettered"] + c["utterances_skipped_existing"] == setup["total"]
    merged = outputs(out)
    keys = [(r["conversation_id"], r["index"]) for r in merged["rows"]]
    assert len(keys) == len(set(keys)) == len(before) + 8  # nothing lost, nothing twice
    assert all(merged["rows"][i] == before[k] for i, k in enumerate(keys) if k in before)
    assert not [d for d in merged["dead"] if d["stage"] == "classify"]
    assert set(merged["convs"]) == set(first_run["convs"]) | {FAULTY}
    assert not list(out.glob(".staging-*"))
    import pyarrow.parquet as pq

    assert pq.read_table(out / "utterances.parquet").num_rows == len(merged["rows"])
    archive = json.loads((out / "archive.json").read_text())  # old and new calls alike, as summarize gives them
    assert archive["utterances"] == len(merged["rows"]) and archive["calls"] == len(merged["convs"])
    again = summarized_copy(out, tmp_path / "again")
    assert all((again / name).read_bytes() == (out / name).read_bytes() for name in ANALYTICS)

    label(setup, out)  # no --skip-existing: everything relabelled, files replaced (never appended)
    again = outputs(out)
    assert sorted((r["conversation_id"], r["index"], r["label"]) for r in again["rows"]) == sorted(
        (r["conversation_id"], r["index"], r["label"]) for r in merged["rows"]
    )


def test_missing_or_tampered_artifact_fails_before_any_work(setup, tmp_path):
    from bioserc.artifacts import ArtifactError
    from bioserc.pipelines import label_pipeline

    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="bioserc train bert"):
        label_pipeline.run([str(DEMO), "-o", str(out), "--model", str(tmp_path / "nowhere"), "--no-bios"])
    assert label_pipeline.main([str(DEMO), "-o", str(out), "--model", str(tmp_path / "nowhere"), "--no-bios"]) == 2
    tampered = tmp_path / "model"
    shutil.copytree(setup["model"], tampered)
    weights = tampered / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError, match="model.safetensors.*sha256"):
        label_pipeline.run([str(DEMO), "-o", str(out), "--model", str(tampered), "--no-bios"])
    assert not out.exists()


def test_remote_artifacts_are_copied_once_and_verify(setup, tmp_path):
    """`fetch_model` is what workers run for --model gs://...; Beam's filesystems read local paths the same way."""
    from bioserc.models.classifier import load_classifier
    from bioserc.pipelines.classifier_handler import check_model, fetch_model

    first = fetch_model(setup["model"], str(tmp_path))
    assert fetch_model(setup["model"], str(tmp_path)) == first and len(list(tmp_path.iterdir())) == 1
    assert check_model(first)["kind"] == "pytorch-classifier" and load_classifier(first).labels == MELD


class ScriptedBackend(LLMBackend):
    name, model_id = "scripted", "scripted-1"

    def count_tokens(self, messages):
        return sum(len(m["content"]) for m in messages) // 4

    def generate(self, batch, config):
        out = []
        for messages in batch:
            if "Finally. Thanks, Chris." in messages[1]["content"]:
                raise RuntimeError("backend exploded")
            speaker = messages[-1]["content"][: -len(" is")]
            out.append(Generation(f" a patient speaker; {speaker} wants the problem solved today.", 40, 12, "stop"))
        return out


def test_bios_generated_in_the_pipeline(setup, tmp_path, monkeypatch):
    from bioserc.bios import backends
    from bioserc.pipelines import label_pipeline

    monkeypatch.setattr(backends, "make_backend", lambda kind, model, **kw: ScriptedBackend())
    out = tmp_path / "out"
    inputs = [str(DEMO / "ccai-password-reset-5120.json"), str(DEMO / "tca-happy-renewal-7302.json")]
    assert (
        label_pipeline.main(
            [*inputs, "-o", str(out), "--model", setup["model"], "--report-calls", "0", "--allow-skips"]
        )
        == 0
    )  # failed bios are dead letters
    c, got = json.loads((out / "run.json").read_text())["counters"], outputs(out)
    assert c["utterances_labeled"] == len(got["rows"]) == 18 and c["bios_generated"] == 2
    bios = {(r["conversation_id"], r["speaker"]): r["bio"] for r in got["rows"]}
    assert bios[("tca-happy-renewal-7302", "AGENT")].startswith("AGENT is a patient speaker")
    assert bios[("ccai-password-reset-5120", "BOT")] is None  # its bio failed: dead-lettered, call still labelled
    assert sorted(d["stage"] for d in got["dead"]) == ["bios"] * 3 and c["speakers_without_bio"] == 3
    assert not (out / "report.html").exists() and (out / "cache").is_dir()


def test_dataflow_pipeline_constructs_with_gpu_hints_on_inference_only(setup):
    import apache_beam as beam

    from bioserc.pipelines import label_pipeline, runner

    hint = "type:nvidia-l4;count:1;install-nvidia-driver"
    argv = [
        str(DEMO),
        "gs://bioserc-demo/calls/*.json",
        "-o",
        "gs://bioserc-demo/labels",
        "--model",
        setup["model"],
        "--gpu-accelerator",
        hint,
        "--runner",
        "DataflowRunner",
        "--project",
        "bioserc-demo",
        "--region",
        "europe-west1",
        "--temp_location",
        "gs://bioserc-demo/tmp",
    ]
    args, beam_args = label_pipeline.make_parser().parse_known_args(argv)
    pipeline = beam.Pipeline(options=runner.pipeline_options(beam_args))
    assert type(pipeline.runner).__name__ == "DataflowRunner"
    plan = label_pipeline.build(pipeline, args)
    assert plan.bios == "generate" and plan.staging.startswith("gs://bioserc-demo/labels/.staging-")
    proto = pipeline.to_runner_api()
    envs = proto.components.environments
    hinted = {
        t.unique_name
        for t in proto.components.transforms.values()
        if t.environment_id
        and envs[t.environment_id].resource_hints.get("beam:resources:accelerator:v1") == hint.encode()
    }
    tops = {name.split("/")[0] for name in hinted}
    assert tops == {"Classify", "Bios"}, tops
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"Read", "Select", "Emit", "Write"} <= names
    first = {t.unique_name for t in plan.prepare.to_runner_api().components.transforms.values()}
    assert {"ReadKeys", "GroupIds", "Decide", "WriteLookups"} <= first  # the light pipeline that runs first


@pytest.mark.slow
def test_wheel_builds_and_ships_the_pipelines(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    import zipfile

    (wheel,) = tmp_path.glob("bioserc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "bioserc/pipelines/label_pipeline.py",
        "bioserc/pipelines/classifier_handler.py",
        "bioserc/pipelines/report.py",
        "bioserc/models/classifier.py",
    } <= names
