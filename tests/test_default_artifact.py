"""The committed models (the default, the fast MiniLM one, EmoryNLP, IEMOCAP): intact, small enough for the
repository, their W-F1 stated over seeds, labelling the demo archive (and an IEMOCAP file, by name, from any
directory); the default found from any directory and shown by `bioserc models list` with its checksum status."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bioserc.artifacts import DEFAULT_MODEL_ENV, default_model_dir, verify_artifact
from bioserc.readers import read_conversations


ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "serving_artifacts" / "default"
MAX_FILE_MB = 50  # GitHub warns at 50 MB a file (refuses 100): the default's 74 MiB encoder is in shards


def test_no_tracked_file_is_over_the_size_limit():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {f.decode(): (ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file()}
    assert sizes and not {f: s for f, s in sizes.items() if s > MAX_FILE_MB * 2**20}


@pytest.mark.parametrize(
    ("name", "label_set", "precision", "min_f1", "min_seeds"),
    [
        ("default", "meld", "int4", 60, 3),
        ("meld-minilm", "meld", "int8", 58, 3),
        ("emorynlp", "emorynlp", "int8", 39, 3),
        ("iemocap", "iemocap", "int8", 60, 3),
    ],
)
def test_shipped_models_verify_state_their_seeds_and_label_the_demo_calls(
    name, label_set, precision, min_f1, min_seeds
):
    pytest.importorskip("onnxruntime")
    from bioserc.models.classifier import load_classifier

    folder = ROOT / "serving_artifacts" / name
    manifest = verify_artifact(str(folder), "onnx-classifier")
    assert manifest["precision"] == precision and manifest["label_set"] == label_set
    assert "README.md" in manifest["files"] and manifest["metrics"]["dev_weighted_f1"] > min_f1
    seeds = manifest["seed_results"]  # the card's W-F1 is a mean over seeds, not one lucky run
    assert seeds["dataset"] == label_set and seeds["n"] >= min_seeds
    convs = read_conversations(str(ROOT / "examples" / "transcripts"))
    bios = {(c.id, s): f"{s} is patient and polite." for c in convs for s in c.speakers}
    classifier = load_classifier(str(folder))
    preds = classifier.predict(convs, bios)
    assert len(preds) == sum(len(c.utterances) for c in convs)
    assert all(p.label in manifest["labels"] and abs(sum(p.probs) - 1) < 1e-4 for p in preds)
    assert len({p.label for p in preds}) > 1  # a real model, not a constant
    # quantized tables are gathered before they are dequantized: no call rebuilds a whole fp32 word table
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(folder / "encoder.onnx"), load_external_data=False).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert not [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in dequantized]
    assert any(n.op_type == "Gather" and n.input[0].endswith("_int8") for n in graph.node)


def test_fast_names_the_shipped_minilm_model_from_any_directory(tmp_path, monkeypatch):
    from bioserc.artifacts import resolve_model_arg

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_model_arg("fast")) == ROOT / "serving_artifacts" / "meld-minilm"


def test_the_default_model_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    found = default_model_dir()
    assert Path(found).is_absolute() and Path(found).resolve() == DEFAULT.resolve()
    assert verify_artifact(found, "onnx-classifier")["label_set"] == "meld"


def models_list(capsys) -> dict:
    from bioserc.cli import main

    assert main(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows][:1] == ["default"] and {"minilm", "smollm2"} <= {r["name"] for r in rows}
    return rows[0]


def test_models_list_shows_the_default_with_its_checksum_status(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    row = models_list(capsys)
    f1 = round(json.loads((DEFAULT / "manifest.json").read_text())["metrics"]["dev_weighted_f1"], 2)
    assert row["status"] == "verified" and row["kind"] == "onnx-classifier" and row["installed"]
    assert row["weighted_f1"] == f1 > 50 and row["label_set"] == "meld" and "problem" not in row
    kept = json.loads((DEFAULT / "manifest.json").read_text())["int8_compute"]["check"]["labels_equal_shipped"]
    assert row["int8"].startswith(f"{100 * kept:.2f}% of labels; ")  # and whether this CPU uses it

    copy = tmp_path / "copy"  # never the real artifact
    shutil.copytree(DEFAULT, copy)
    labels = copy / "labels.txt"
    labels.write_text(labels.read_text().replace("joy", "JOY"))
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(copy))
    row = models_list(capsys)
    assert row["status"] == "MODIFIED" and row["path"] == str(copy) and row["package"] == f"${DEFAULT_MODEL_ENV}"
    assert "'labels.txt' does not match its sha256" in row["problem"] and row["weighted_f1"] == f1

    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "gone"))
    row = models_list(capsys)
    assert row["status"] == "missing" and not row["installed"]


IEMOCAP_CALLS = {  # a tiny file in the BiosERC JSON layout of IEMOCAP: genders become the session's pseudo-names
    "Ses02F_impro01": {
        "labels": [2, 5, 3, 5, 1, 2],
        "sentences": [
            "Hi, I'm calling about my order.",
            "It still hasn't arrived, three weeks now.",
            "This is ridiculous, I want my money back!",
            "Nobody ever calls me back.",
            "I'm just so tired of this.",
            "Okay. Thank you.",
        ],
        "genders": ["F", "F", "F", "F", "F", "M"],
    },
    "Ses02M_impro02": {
        "labels": [0, 4, 0, 2],
        "sentences": [
            "Good news, the refund went through!",
            "Oh that's wonderful, thank you!",
            "Glad I could help.",
            "Bye.",
        ],
        "genders": ["M", "F", "M", "F"],
    },
}


def test_label_and_evaluate_with_the_iemocap_model_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from bioserc.cli import main

    data = tmp_path / "iemocap.valid.json"
    data.write_text(json.dumps(IEMOCAP_CALLS))
    monkeypatch.chdir(tmp_path)
    assert main(["label", str(data), "-o", "out", "--model", "iemocap", "--report-calls", "0"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "utterances.jsonl").read_text().splitlines()]
    iemocap = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert len(rows) == 10 and {r["speaker"] for r in rows} == {"PATRICIA", "JOHN"}
    assert all(r["label"] in iemocap and sorted(r["probs"]) == sorted(iemocap) for r in rows)
    assert {r["gold_label"] for r in rows} == {"neutral", "frustrated", "angry", "sad", "happy", "excited"}
    capsys.readouterr()
    assert main(["evaluate", "--model", "iemocap", "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == iemocap and report["n"] == 10 and 0 <= report["weighted_f1"] <= 100


def test_the_default_is_calibrated_for_int8_compute_within_the_label_bar():
    check = verify_artifact(str(DEFAULT), "onnx-classifier")["int8_compute"]["check"]
    assert check["data"] == "meld.valid.json" and check["utterances"] == 1109
    assert check["labels_equal_shipped"] >= 0.99  # the serving bar: >= 99% of the shipped graph's labels
    assert abs(check["weighted_f1_int8"] - check["weighted_f1_shipped"]) < 0.5


def test_the_default_in_int8_labels_the_demo_calls_as_the_shipped_graph(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from bioserc.models.classifier import load_classifier
    from bioserc.models.int8_graph import exact_int8_flags

    if not exact_int8_flags():
        pytest.skip("int8 compute runs only on CPUs with VNNI or AMX; this one has neither")
    monkeypatch.setenv("BIOSERC_CACHE", str(tmp_path))  # a fresh build, as on a new machine
    convs = read_conversations(str(ROOT / "examples" / "transcripts"))
    shipped = load_classifier(str(DEFAULT), int8="off").predict(convs)
    int8 = load_classifier(str(DEFAULT), int8="on")
    assert int8.int8 and len([p for p in (tmp_path / "int8").iterdir() if p.is_dir()]) == 1
    same = [a.label == b.label for a, b in zip(shipped, int8.predict(convs), strict=True)]
    assert len(same) == 76 and sum(same) >= 74  # 76 of 76 on the machine that measured it
