"""The committed default model: intact, small enough for the repository, and labelling the demo archive."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bioserc.artifacts import verify_artifact
from bioserc.readers import read_conversations


ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "serving_artifacts" / "default"
MAX_FILE_MB = 50


def test_no_tracked_file_is_over_the_size_limit():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {f.decode(): (ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file()}
    assert sizes and not {f: s for f, s in sizes.items() if s > MAX_FILE_MB * 2**20}


def test_default_model_verifies_and_labels_the_demo_calls():
    pytest.importorskip("onnxruntime")
    from bioserc.models.classifier import load_classifier

    manifest = verify_artifact(str(DEFAULT), "onnx-classifier")
    assert manifest["precision"] == "int8" and manifest["label_set"] == "meld"
    assert "README.md" in manifest["files"] and manifest["metrics"]["dev_weighted_f1"] > 50
    convs = read_conversations(str(ROOT / "examples" / "transcripts"))
    bios = {(c.id, s): f"{s} is patient and polite." for c in convs for s in c.speakers}
    classifier = load_classifier(str(DEFAULT))
    preds = classifier.predict(convs, bios)
    assert len(preds) == sum(len(c.utterances) for c in convs)
    assert all(p.label in manifest["labels"] and abs(sum(p.probs) - 1) < 1e-4 for p in preds)
    assert len({p.label for p in preds}) > 1  # a real model, not a constant
