"""Serving-artifact manifests: what a model folder is, and proof that its files are the ones that were exported.

Every export (training's best model, ONNX, TensorRT-LLM) writes `manifest.json` beside its files. Loaders call
`verify_artifact` before touching any weights: a missing, extra-large or tampered file fails with a clear error before
a pipeline starts work. Training, export and pipelines never import each other; they meet here.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any


MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
KINDS = ("pytorch-classifier", "onnx-classifier", "onnx-llm", "hf-llm", "lora-adapter", "trtllm-engine")


class ArtifactError(RuntimeError):
    """The artifact folder is missing, incomplete or not what its manifest says."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str, kind: str, **fields: Any) -> dict[str, Any]:
    """Hash every file in `directory` (recursively, except the manifest) and write manifest.json.

    Typical fields: model_family, label_set, labels, prompt_version, source_checkpoint, metrics, opset, versions.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of {KINDS}")
    files = {}
    for root, _dirs, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel != MANIFEST:
                files[rel] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    manifest = {"manifest_version": MANIFEST_VERSION, "kind": kind,
                "created": datetime.now(UTC).isoformat(timespec="seconds"), **fields,
                "files": dict(sorted(files.items()))}
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return manifest


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ArtifactError(f"model artifact {directory!r} does not exist")
    if not os.path.isfile(path):
        raise ArtifactError(f"{directory!r} has no {MANIFEST}; export it with `bioserc export ...` (or pass a "
                            "folder written by bioserc)")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: malformed manifest ({err.msg} at line {err.lineno})") from None
    if manifest.get("manifest_version", 0) > MANIFEST_VERSION:
        raise ArtifactError(f"{path}: manifest_version {manifest['manifest_version']} is newer than this bioserc")
    return manifest


def verify_artifact(directory: str, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the manifest's kind and every file's size and sha256; return the manifest."""
    manifest = read_manifest(directory)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and manifest.get("kind") not in kinds:
        raise ArtifactError(f"{directory!r} holds a {manifest.get('kind')!r} artifact, expected one of {kinds}")
    for rel, meta in manifest.get("files", {}).items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            raise ArtifactError(f"{directory!r}: file {rel!r} listed in the manifest is missing")
        if os.path.getsize(path) != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            raise ArtifactError(f"{directory!r}: file {rel!r} does not match its sha256 in {MANIFEST} "
                                "(modified or corrupted); re-export the artifact")
    return manifest


def manifest_hash(directory: str) -> str:
    """A short id for outputs: which exact artifact produced a prediction."""
    return sha256_file(os.path.join(directory, MANIFEST))[:16]
