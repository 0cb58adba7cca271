"""Artifact manifests: written with checksums, verified before use, tampering and gaps rejected clearly."""

from __future__ import annotations

import json

import pytest

from bioserc.artifacts import ArtifactError, manifest_hash, verify_artifact, write_manifest


def make_artifact(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x01graph")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt").write_text("[PAD]\nhello\n")
    return write_manifest(str(tmp_path), "onnx-classifier", labels=["neutral", "joy"], label_set="meld")


def test_manifest_lists_every_file_with_sha256(tmp_path):
    manifest = make_artifact(tmp_path)
    assert set(manifest["files"]) == {"model.onnx", "tokenizer/vocab.txt"}
    assert verify_artifact(str(tmp_path), "onnx-classifier")["labels"] == ["neutral", "joy"]
    assert len(manifest_hash(str(tmp_path))) == 16


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"\x08\x01grapH"), "does not match its sha256"),
        (lambda d: (d / "tokenizer" / "vocab.txt").unlink(), "is missing"),
        (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{"), "malformed manifest"),
    ],
)
def test_tampered_or_incomplete_artifacts_are_rejected(tmp_path, damage, message):
    make_artifact(tmp_path)
    damage(tmp_path)
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(str(tmp_path))


def test_wrong_kind_and_missing_folder(tmp_path):
    make_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="expected one of"):
        verify_artifact(str(tmp_path), "onnx-llm")
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact(str(tmp_path / "nope"))
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "onnx-classifier"
