"""Artifact manifests: written with checksums, verified before use; tampering, gaps, unlisted files, paths out of
the folder and inconsistent labels are rejected with one-line errors before anything is loaded."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from bioserc.artifacts import ArtifactError, artifact_file, manifest_id, verify_artifact, write_manifest


def make_artifact(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x01graph")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt").write_text("[PAD]\nhello\n")
    return write_manifest(str(tmp_path), "onnx-llm", labels=["neutral", "joy"], label_set="meld")


def test_manifest_lists_every_file_with_sha256(tmp_path):
    manifest = make_artifact(tmp_path)
    assert set(manifest["files"]) == {"model.onnx", "tokenizer/vocab.txt"}
    assert verify_artifact(str(tmp_path), "onnx-llm")["labels"] == ["neutral", "joy"]
    assert len(manifest_id(str(tmp_path))) == 16


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
        verify_artifact(str(tmp_path), "onnx-classifier")
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact(str(tmp_path / "nope"))
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "onnx-llm"


MELD = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


def make_classifier(directory, labels=MELD, bio_mode="none", **fields):
    """A small onnx-classifier folder as `bioserc export onnx` lays it out (the graphs are placeholder bytes)."""
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"labels": MELD, "bio_mode": "none", "window": 0}))
    (directory / "labels.txt").write_text("".join(f"{label}\n" for label in MELD))
    (directory / "tokenizer.json").write_text('{"model": {"vocab": {"[PAD]": 0}}}')
    (directory / "encoder.onnx").write_bytes(b"encoder graph")
    (directory / "head.onnx").write_bytes(b"head graph")
    fields = {
        "labels": labels,
        "bio_mode": bio_mode,
        "graphs": {"encoder": "encoder.onnx", "head": "head.onnx"},
        **fields,
    }
    return write_manifest(str(directory), "onnx-classifier", label_set="meld", **fields)


def edit_manifest(directory, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_written_classifier_verifies(tmp_path):
    make_classifier(tmp_path / "clf")
    manifest = verify_artifact(str(tmp_path / "clf"), "onnx-classifier")
    assert artifact_file(str(tmp_path / "clf"), manifest, "head.onnx") == str(tmp_path / "clf" / "head.onnx")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tokenizer.json", r"'tokenizer.json' is not listed in manifest.json; re-export"),
        ("head.onnx", r"graphs.head names 'head.onnx', which its files do not list"),
    ],
)
def test_a_file_dropped_from_the_manifest_and_then_tampered_is_refused(tmp_path, name, message):
    make_classifier(tmp_path / "clf")
    edit_manifest(tmp_path / "clf", lambda m: m["files"].pop(name))
    (tmp_path / "clf" / name).write_bytes(b"other weights")
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(str(tmp_path / "clf"))


def test_an_extra_file_in_the_folder_is_refused(tmp_path):
    make_artifact(tmp_path)
    (tmp_path / "tokenizer" / "added_tokens.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"'tokenizer/added_tokens.json' is not listed in manifest.json"):
        verify_artifact(str(tmp_path))


@pytest.mark.parametrize("files", [{}, None, []])
def test_a_manifest_without_files_is_refused(tmp_path, files):
    make_artifact(tmp_path)
    edit_manifest(tmp_path, lambda m: m.update(files=files) if files is not None else m.pop("files"))
    with pytest.raises(ArtifactError, match="lists no files"):
        verify_artifact(str(tmp_path))


def test_a_graph_outside_the_folder_is_refused(tmp_path):
    make_classifier(tmp_path / "clf")
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(b"unverified graph")
    edit_manifest(tmp_path / "clf", lambda m: m["graphs"].update(encoder=str(evil)))
    with pytest.raises(ArtifactError, match=r"graphs.encoder names '/.*evil.onnx', which is not a normalised"):
        verify_artifact(str(tmp_path / "clf"))
    manifest = json.loads((tmp_path / "clf" / "manifest.json").read_text())
    with pytest.raises(ArtifactError, match="not a normalised relative path"):  # loaders given a manifest refuse too
        artifact_file(str(tmp_path / "clf"), manifest, str(evil))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["graphs"].update(head="../evil.onnx"), r"graphs.head names '../evil.onnx'"),
        (lambda m: m["graphs"].update(head="sub/../head.onnx"), r"graphs.head names 'sub/../head.onnx'"),
        (lambda m: m["files"].update({"../evil.onnx": m["files"]["head.onnx"]}), r"files names '../evil.onnx'"),
        (lambda m: m.update(quantized=["./encoder.onnx"]), r"quantized\[0\] names './encoder.onnx'"),
        (lambda m: m["graphs"].update(head="graph.onnx"), r"graphs.head names 'graph.onnx', which its files do not"),
    ],
)
def test_paths_that_leave_the_folder_or_are_not_listed_are_refused(tmp_path, change, message):
    make_classifier(tmp_path / "clf")
    (tmp_path / "evil.onnx").write_bytes(b"head graph")
    edit_manifest(tmp_path / "clf", change)
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(str(tmp_path / "clf"))


def test_artifact_file_refuses_files_the_manifest_does_not_list(tmp_path):
    manifest = make_classifier(tmp_path / "clf")
    (tmp_path / "clf" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="'extra.onnx' is not listed in manifest.json"):
        artifact_file(str(tmp_path / "clf"), manifest, "extra.onnx")


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    make_classifier(tmp_path / "clf")
    (tmp_path / "outside.onnx").write_bytes(b"head graph")
    (tmp_path / "clf" / "head.onnx").unlink()
    (tmp_path / "clf" / "head.onnx").symlink_to(tmp_path / "outside.onnx")  # same bytes: the checksum alone passes
    with pytest.raises(ArtifactError, match="'head.onnx' resolves outside the artifact folder"):
        verify_artifact(str(tmp_path / "clf"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: edit_manifest(d, lambda m: m.update(labels=MELD[::-1])),
            r"manifest.json labels \['anger'.*\] differ from config.json's \['neutral'.*\] \(order matters\)",
        ),
        (
            lambda d: edit_manifest(d, lambda m: m.update(bio_mode="mlp")),
            r"manifest.json bio_mode 'mlp' differs from config.json's 'none'",
        ),
        (lambda d: edit_manifest(d, lambda m: m.pop("labels")), "manifest.json has no labels list"),
    ],
)
def test_labels_and_bio_mode_must_agree_with_the_config(tmp_path, change, message):
    make_classifier(tmp_path / "clf")
    change(tmp_path / "clf")
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(str(tmp_path / "clf"))


def test_a_reordered_labels_txt_is_refused(tmp_path):
    (tmp_path / "clf").mkdir()
    make_classifier(tmp_path / "clf")
    (tmp_path / "clf" / "labels.txt").write_text("\n".join(MELD[::-1]) + "\n")
    write_manifest(str(tmp_path / "clf"), "onnx-classifier", labels=MELD, bio_mode="none")  # re-hashed, yet wrong
    with pytest.raises(ArtifactError, match=r"differ from labels.txt's \['anger'"):
        verify_artifact(str(tmp_path / "clf"))


def test_the_pipeline_driver_refuses_an_inconsistent_model_before_reading_input(tmp_path):
    pytest.importorskip("apache_beam")
    from bioserc.pipelines.classifier_handler import check_model

    make_classifier(tmp_path / "clf", labels=MELD[::-1])
    with pytest.raises(ArtifactError, match="differ from config.json's"):
        check_model(str(tmp_path / "clf"))


class FakeRemote:
    """Beam's FileSystems for `fake://` paths, served from a local folder (what gs:// gives the driver)."""

    def __init__(self, root):
        self.root = str(root)

    def local(self, path: str) -> str:
        return path.replace("fake://", self.root + "/", 1)

    def join(self, base, *parts):
        return "/".join([base.rstrip("/"), *parts])

    def exists(self, path):
        return os.path.exists(self.local(path))

    def open(self, path):
        return open(self.local(path), "rb")

    def match(self, patterns):
        def found(path):
            return [SimpleNamespace(size_in_bytes=os.path.getsize(path))] if os.path.isfile(path) else []

        return [SimpleNamespace(metadata_list=found(self.local(p))) for p in patterns]


@pytest.fixture
def remote(tmp_path, monkeypatch):
    pytest.importorskip("apache_beam")
    from bioserc.pipelines import classifier_handler

    monkeypatch.setattr(classifier_handler, "FileSystems", FakeRemote(tmp_path / "bucket"))
    (tmp_path / "bucket").mkdir()
    return tmp_path / "bucket"


def test_remote_models_get_the_same_consistency_check(remote):
    from bioserc.pipelines.classifier_handler import check_model

    make_classifier(remote / "good")
    assert check_model("fake://good")["labels"] == MELD
    make_classifier(remote / "bad", labels=MELD[::-1])
    with pytest.raises(ArtifactError, match=r"'fake://bad': manifest.json labels \['anger'.*differ from config"):
        check_model("fake://bad")
    make_classifier(remote / "edited")
    config = remote / "edited" / "config.json"
    config.write_text(config.read_text().replace('"none"', '"mlp!"'))
    with pytest.raises(ArtifactError, match="'config.json' does not match its sha256"):  # same size, other bytes
        check_model("fake://edited")


def test_a_remote_manifest_cannot_make_workers_write_outside_their_copy(remote, tmp_path):
    from bioserc.pipelines.classifier_handler import check_model, fetch_model

    make_classifier(remote / "model")
    edit_manifest(remote / "model", lambda m: m["files"].update({"../../escaped.txt": m["files"]["head.onnx"]}))
    for step in (check_model, lambda path: fetch_model(path, str(tmp_path / "cache"))):
        with pytest.raises(ArtifactError, match="files names '../../escaped.txt'"):
            step("fake://model")
    assert not list(tmp_path.rglob("escaped.txt"))
