"""Serving-artifact manifests: what a model folder is, and proof that its files are the ones that were exported.

Every export (training's best model, ONNX, TensorRT-LLM) writes `manifest.json` beside its files. Loaders call
`verify_artifact` before touching any weights: every file in the folder must be listed, every listed file must match
its size and sha256, every path the manifest names must stay inside the folder, and a classifier's label order and
bio mode must agree with its config, so a bad artifact fails with a one-line error before a pipeline reads any input.
Loaders turn a path the manifest names into a file with `artifact_file`. Remote folders (gs://, read through the
pipelines' file systems, passed in as `open_file`/`size` functions) get `check_label_model`'s cheap check on the driver
and a full local copy on the workers (`fetch_artifact`). `manifest_id` is the id outputs carry of the artifact that
made them. Training, export and pipelines never import each other; they meet here. The classifiers shipped with
bioserc (serving_artifacts/NAME) are addressable by NAME: every classifier `--model` resolves it with
`resolve_model_arg`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from typing import IO, Any


MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ARTIFACT_KINDS = ("pytorch-classifier", "onnx-classifier", "onnx-llm", "hf-llm", "lora-adapter", "trtllm-engine")
CLASSIFIER_KINDS = ("pytorch-classifier", "onnx-classifier")
LLM_KINDS = ("lora-adapter", "hf-llm", "onnx-llm")  # LLMs that label by scoring the label words
LABEL_KINDS = (*CLASSIFIER_KINDS, *LLM_KINDS)  # what `bioserc label --model` takes
CONFIG_FILE, LABELS_FILE = "config.json", "labels.txt"  # a classifier's own statement of its labels and bio mode
# Manifest fields that name files of the artifact itself (model_path, source_path, base_model... name other places).
PATH_FIELDS = ("graphs", "quantized", "optimized", "external_data", "tokenizer_files_copied")
DEFAULT_MODEL_ENV = "BIOSERC_DEFAULT_MODEL"
DEFAULT_PACKAGE = "bioserc.serving_artifacts"  # the repository's serving_artifacts/ folder, installed with bioserc
# Names for a shipped folder by what it is for. `fast`: the quickest MELD model at the best W-F1 for its speed; a
# MiniLM student distilled from the default tied the plain MiniLM recipe, so it is that one (docs/BENCHMARKS.md).
SHIPPED_ALIASES = {"fast": "meld-minilm"}


class ArtifactError(RuntimeError):
    """The artifact folder is missing, incomplete or not what its manifest says."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shipped_root() -> Traversable:
    """The installed serving_artifacts folder: found through the package (a wheel or an editable install), never
    the working directory, so shipped classifiers work from any directory."""
    try:
        return resources.files(DEFAULT_PACKAGE)
    except ModuleNotFoundError:
        raise ArtifactError(
            f"{DEFAULT_PACKAGE} is not installed, so there is no default model; reinstall bioserc "
            "(`bash scripts/install.sh`) or pass --model DIR"
        ) from None


def default_model_dir() -> str:
    """The classifier `--model` defaults to: `$BIOSERC_DEFAULT_MODEL`, else the one installed with the package."""
    if override := os.environ.get(DEFAULT_MODEL_ENV):
        return override
    return str(shipped_root() / "default")


def shipped_models() -> dict[str, str]:
    """The classifiers shipped with bioserc, name -> folder: every folder of the installed serving_artifacts that
    holds a manifest.json, `default` first, then by name, then the `SHIPPED_ALIASES` whose folder is there; empty
    when the package is not installed."""
    try:
        root = shipped_root()
    except ArtifactError:
        return {}
    names = [entry.name for entry in root.iterdir() if entry.is_dir() and (entry / MANIFEST).is_file()]
    models = {name: str(root / name) for name in sorted(names, key=lambda name: (name != "default", name))}
    aliases = {a: models[t] for a, t in SHIPPED_ALIASES.items() if t in models and a not in models}
    return {**models, **aliases}


def shipped_names() -> str:
    """The shipped classifiers' names, for the `--help` of every classifier `--model`."""
    models = shipped_models()
    target = {alias: name for alias, name in SHIPPED_ALIASES.items() if models.get(alias) == models.get(name)}
    return ", ".join(f"{n} (= {target[n]})" if n in target else n for n in models) or "none installed"


def resolve_model_arg(value: str) -> str:
    """A classifier `--model` as given -> the folder to load: an existing local folder wins (so a folder named like
    a shipped classifier is still used), else a shipped classifier's name gives its folder, else the value unchanged
    (its error is then the same as for any missing folder). The argparse `type` of every classifier `--model`."""
    if os.path.isdir(value):
        return value
    return shipped_models().get(value, value)


def write_manifest(directory: str, kind: str, **fields: Any) -> dict[str, Any]:
    """Hash every file in `directory` (recursively, except the manifest) and write manifest.json.

    Typical fields: model_family, label_set, labels, prompt_version, source_checkpoint, metrics, opset, versions.
    """
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of {ARTIFACT_KINDS}")
    files = {}
    for rel in _present_files(directory):
        path = os.path.join(directory, rel)
        files[rel] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
        "files": dict(sorted(files.items())),
    }
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return manifest


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ArtifactError(f"model artifact {directory!r} does not exist")
    if not os.path.isfile(path):
        raise ArtifactError(
            f"{directory!r} has no {MANIFEST}; export it with `bioserc export ...` (or pass a "
            "folder written by bioserc)"
        )
    with open(path, "rb") as fh:
        return parse_manifest(path, fh.read())


def parse_manifest(path: str, raw: bytes) -> dict[str, Any]:
    """The manifest read from `path` (local or remote), as a dict, or an `ArtifactError` naming it."""
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: malformed manifest ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path}: malformed manifest (not UTF-8: {err.reason})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: malformed manifest (a JSON object expected)")
    version = manifest.get("manifest_version", 0)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise ArtifactError(
            f"{path}: manifest_version {version!r} is not one this bioserc reads (up to {MANIFEST_VERSION})"
        )
    return manifest


def check_manifest(where: str, manifest: dict[str, Any]) -> None:
    """The manifest's own shape, without touching any file (so remote folders get it too).

    It lists at least one file, each with its sha256 and size; every path it names is relative, normalised and
    inside the folder, and the paths of `PATH_FIELDS` are among the listed files.
    """
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(
            f"{where!r}: {MANIFEST} lists no files, so nothing can be verified; re-export the artifact"
        )
    for rel, meta in files.items():
        _check_rel(where, "files", rel)
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and isinstance(meta.get("bytes"), int)):
            raise ArtifactError(f"{where!r}: {MANIFEST} entry for file {rel!r} needs a sha256 and a size in bytes")
    for field, rel in _named_paths(manifest):
        _check_rel(where, field, rel)
        if rel not in files:
            raise ArtifactError(
                f"{where!r}: {MANIFEST} {field} names {rel!r}, which its files do not list; re-export the artifact"
            )


def verify_artifact(directory: str, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the manifest's kind, paths and every file's size and sha256, then a classifier's consistency.

    Every file in the folder (recursively) must be listed: a loader may open any of them (a tokenizer reads what it
    finds), so an unlisted file would be an unverified one. Returns the manifest.
    """
    manifest = read_manifest(directory)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and manifest.get("kind") not in kinds:
        raise ArtifactError(f"{directory!r} holds a {manifest.get('kind')!r} artifact, expected one of {kinds}")
    check_manifest(directory, manifest)
    files = manifest["files"]
    unlisted = sorted(set(_present_files(directory)) - set(files))
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise ArtifactError(
            f"{directory!r}: file {unlisted[0]!r}{more} is not listed in {MANIFEST}; re-export the artifact"
        )
    for rel, meta in files.items():
        path = _inside(directory, rel)
        if not os.path.isfile(path):
            raise ArtifactError(f"{directory!r}: file {rel!r} listed in the manifest is missing")
        if os.path.getsize(path) != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            raise ArtifactError(
                f"{directory!r}: file {rel!r} does not match its sha256 in {MANIFEST} "
                "(modified or corrupted); re-export the artifact"
            )
    if manifest.get("kind") in CLASSIFIER_KINDS:
        check_classifier(directory, manifest, lambda rel: _read_local(directory, manifest, rel))
    return manifest


def artifact_file(directory: str, manifest: dict[str, Any], rel: str) -> str:
    """The local path of a file the (verified) manifest lists; anything it does not list is refused.

    Loaders open every path a manifest names through this, so a manifest cannot point them at other files.
    """
    _check_rel(directory, "path", rel)
    if rel not in manifest.get("files", {}):
        raise ArtifactError(f"{directory!r}: file {rel!r} is not listed in {MANIFEST}; re-export the artifact")
    return _inside(directory, rel)


def check_classifier(where: str, manifest: dict[str, Any], read: Callable[[str], bytes]) -> None:
    """A classifier's label order and bio mode: the manifest (what pipelines plan with) must agree with config.json
    (what the model computes with) and labels.txt; else every prediction would carry the wrong name.

    `read(rel)` returns a listed file's bytes; they are checked against the manifest here.
    """
    files = manifest["files"]
    if CONFIG_FILE not in files:
        raise ArtifactError(
            f"{where!r}: a {manifest.get('kind')} artifact needs {CONFIG_FILE}, which {MANIFEST} "
            "does not list; re-export the artifact"
        )
    try:
        config = json.loads(_checked(where, files, CONFIG_FILE, read(CONFIG_FILE)))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{where!r}: file {CONFIG_FILE!r} is not valid JSON ({err})") from None
    labels = manifest.get("labels")
    if not isinstance(labels, list) or not labels:
        raise ArtifactError(f"{where!r}: {MANIFEST} has no labels list; re-export the artifact")
    if not isinstance(config, dict) or config.get("labels") != labels:
        theirs = config.get("labels") if isinstance(config, dict) else None
        raise ArtifactError(
            f"{where!r}: {MANIFEST} labels {labels} differ from {CONFIG_FILE}'s {theirs} (order "
            "matters); re-export the artifact"
        )
    if LABELS_FILE in files:
        text = _checked(where, files, LABELS_FILE, read(LABELS_FILE)).decode("utf-8", errors="replace")
        listed = [line.strip() for line in text.splitlines() if line.strip()]
        if listed != labels:
            raise ArtifactError(
                f"{where!r}: {MANIFEST} labels {labels} differ from {LABELS_FILE}'s {listed} (order "
                "matters); re-export the artifact"
            )
    if manifest.get("bio_mode") != config.get("bio_mode"):
        raise ArtifactError(
            f"{where!r}: {MANIFEST} bio_mode {manifest.get('bio_mode')!r} differs from "
            f"{CONFIG_FILE}'s {config.get('bio_mode')!r}; re-export the artifact"
        )
    if profile_of(manifest) != profile_of(config):  # what the speaker inputs are: bio text or a profile vector
        raise ArtifactError(
            f"{where!r}: {MANIFEST} profile {profile_of(manifest)} differs from {CONFIG_FILE}'s "
            f"{profile_of(config)}; re-export the artifact"
        )


def profile_of(fields: dict[str, Any]) -> tuple[str, int]:
    """(profile, vector size) of a classifier's manifest or config.json; artifacts from before profiles read text."""
    return fields.get("profile") or "text", int(fields.get("profile_dim") or 0)


def manifest_id(directory: str, open_file: Callable[[str], IO[bytes]] | None = None) -> str:
    """A short id for outputs: which exact artifact produced a prediction (the sha256 of its manifest, 16 digits).

    Args:
        directory: the artifact folder.
        open_file: opens a file of a remote folder by its relative path (None: `directory` is local).
    """
    if open_file is None:
        return sha256_file(os.path.join(directory, MANIFEST))[:16]
    with open_file(MANIFEST) as fh:
        return _id_of(fh.read())


def _id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def missing_model_help(path: str) -> str:
    return (
        f"no model artifact at {path!r}. Pass --model DIR with a folder holding manifest.json: `bioserc train "
        "bert --config FILE` writes one (its best/ folder) and `bioserc export onnx` another. Without --model the "
        f"default installed with bioserc is used (${DEFAULT_MODEL_ENV} overrides it)"
    )


def check_label_model(
    path: str, open_file: Callable[[str], IO[bytes]] | None = None, size: Callable[[str], int | None] | None = None
) -> dict[str, Any]:
    """Verify a `bioserc label` model before any input is read; return its manifest.

    A local folder (`open_file` None) gets the full check of `verify_artifact` (every file listed and matching its
    sha256, every path inside the folder, labels and bio_mode consistent with config.json). A remote one gets what can
    be read cheaply: the manifest's shape and paths, every listed file's size (`size(rel)`, None when missing), and
    config.json (+ labels.txt) matched against their sha256 and checked for the same consistency; the workers verify
    their local copy in full when they load it.
    """
    if open_file is None:
        if not os.path.isdir(path):
            raise ArtifactError(missing_model_help(path))
        return verify_artifact(path, LABEL_KINDS)
    assert size is not None, "a remote model needs size() as well as open_file()"
    if size(MANIFEST) is None:
        raise ArtifactError(f"{missing_model_help(path)} (no {MANIFEST} found there)")

    def read(rel: str) -> bytes:
        with open_file(rel) as fh:
            return fh.read()

    manifest = parse_manifest(f"{path.rstrip('/')}/{MANIFEST}", read(MANIFEST))
    if manifest.get("kind") not in LABEL_KINDS:
        raise ArtifactError(f"{path!r} holds a {manifest.get('kind')!r} artifact, expected one of {LABEL_KINDS}")
    check_manifest(path, manifest)
    for rel, meta in manifest["files"].items():
        if size(rel) != meta["bytes"]:
            raise ArtifactError(f"{path!r}: file {rel!r} listed in the manifest is missing or has the wrong size")
    if manifest["kind"] in CLASSIFIER_KINDS:
        check_classifier(path, manifest, read)
    elif not manifest.get("labels"):
        raise ArtifactError(f"{path!r}: the {manifest['kind']} manifest names no labels")
    return manifest


def fetch_artifact(path: str, open_file: Callable[[str], IO[bytes]], cache_root: str | None = None) -> str:
    """Copy a remote artifact folder (the files its manifest lists) to local disk once per machine; return the copy.

    The manifest's paths are checked first, so a bad one cannot write outside the copy; the loader then verifies the
    copy in full. Worker processes racing on one copy each write their own, and the first rename wins.
    """
    with open_file(MANIFEST) as fh:
        raw = fh.read()
    manifest = parse_manifest(f"{path.rstrip('/')}/{MANIFEST}", raw)
    check_manifest(path, manifest)
    target = os.path.join(cache_root or os.path.join(tempfile.gettempdir(), "bioserc-models"), _id_of(raw))
    if os.path.isfile(os.path.join(target, MANIFEST)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(target))
    for rel in manifest["files"]:
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with open_file(rel) as src, open(os.path.join(tmp, rel), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    with open(os.path.join(tmp, MANIFEST), "wb") as fh:  # written last: its presence marks a complete copy
        fh.write(raw)
    try:
        os.rename(tmp, target)
    except OSError:  # another worker process finished the same copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_rel(where: str, field: str, rel: Any) -> None:
    """A path inside the folder, spelt one way: relative, '/'-separated, normalised, no '..', not the manifest."""
    ok = (
        isinstance(rel, str)
        and rel not in ("", ".", MANIFEST)
        and "\\" not in rel
        and "\0" not in rel
        and not posixpath.isabs(rel)
        and posixpath.normpath(rel) == rel
        and ".." not in rel.split("/")
    )
    if not ok:
        raise ArtifactError(
            f"{where!r}: {MANIFEST} {field} names {rel!r}, which is not a normalised relative path "
            "inside the folder (absolute, '..' and '\\' are refused); re-export the artifact"
        )


def _inside(directory: str, rel: str) -> str:
    """`directory/rel`, refused when a symlink on the way resolves outside the folder."""
    root = os.path.realpath(directory)
    path = os.path.join(directory, rel)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ArtifactError(
            f"{directory!r}: file {rel!r} resolves outside the artifact folder (a symlink); copy the "
            "file into the folder and re-export the artifact"
        )
    return path


def _present_files(directory: str) -> Iterator[str]:
    """Every file under `directory` but the manifest, as '/'-separated relative paths; symlinks must stay inside."""
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            _inside(directory, os.path.relpath(os.path.join(root, name), directory))
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel != MANIFEST:
                _inside(directory, rel)
                yield rel


def _named_paths(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for field in PATH_FIELDS:
        value = manifest.get(field)
        if isinstance(value, dict):
            yield from ((f"{field}.{key}", rel) for key, rel in value.items())
        elif isinstance(value, list):
            yield from ((f"{field}[{i}]", rel) for i, rel in enumerate(value))
        elif value is not None:
            yield field, value


def _read_local(directory: str, manifest: dict[str, Any], rel: str) -> bytes:
    with open(artifact_file(directory, manifest, rel), "rb") as fh:
        return fh.read()


def _checked(where: str, files: dict[str, Any], rel: str, data: bytes) -> bytes:
    meta = files[rel]
    if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ArtifactError(
            f"{where!r}: file {rel!r} does not match its sha256 in {MANIFEST} "
            "(modified or corrupted); re-export the artifact"
        )
    return data
