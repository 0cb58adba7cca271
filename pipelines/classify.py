"""The labeling pipeline's model step: `ClassifierModelHandler` for RunInference, and rows/summaries of its results.

The handler loads `load_classifier(model_dir)` once per worker process and labels a batch of conversations (each with
its speakers' bios) in one `predict` call. A batch that fails is retried one conversation at a time, so a conversation
the model cannot label costs only itself: `LabelOutcome.error` is set and all its utterances go to the dead letter.
The artifact is verified on the driver when the handler is built (a missing or tampered model fails before any work)
and again by `load_classifier` on every worker. `--model gs://...` folders are copied to local disk on the workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from bioserc.analytics.calls import calls_row, summarise
from bioserc.analytics.thresholds import Thresholds
from bioserc.artifacts import (
    CLASSIFIER_KINDS,
    DEFAULT_MODEL_ENV,
    MANIFEST,
    ArtifactError,
    check_classifier,
    check_manifest,
    parse_manifest,
    verify_artifact,
)
from bioserc.errors import RAW_LIMIT
from bioserc.models.classifier import UtteranceClassifier, load_classifier
from bioserc.models.collate import Bio
from bioserc.models.llm_scoring import LLM_KINDS
from bioserc.models.predict import Prediction
from bioserc.pipelines.analytics import ArchiveCombineFn
from bioserc.pipelines.outputs import ARCHIVE_PARTS, CALLS, CONVERSATIONS, PARQUET, UTTERANCES
from bioserc.pipelines.records import DEAD, Batch, ledger
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

# utterances.parquet; probs is a map so rows of models with different label sets can share one file
PARQUET_SCHEMA = pa.schema([
    ("conversation_id", pa.string()), ("index", pa.int64()), ("speaker", pa.string()), ("role", pa.string()),
    ("text", pa.string()), ("original_text", pa.string()), ("start_ms", pa.int64()), ("end_ms", pa.int64()),
    ("source_path", pa.string()), ("source_format", pa.string()), ("source_id", pa.string()),
    ("gold_label", pa.string()), ("label", pa.string()), ("probs", pa.map_(pa.string(), pa.float64())),
    ("bio", pa.string()), ("model_id", pa.string()),
])


def missing_model_help(path: str) -> str:
    return (f"no model artifact at {path!r}. Pass --model DIR with a folder holding manifest.json: `bioserc train "
            "bert --config FILE` writes one (its best/ folder) and `bioserc export onnx` another. Without --model the "
            f"default installed with bioserc is used (${DEFAULT_MODEL_ENV} overrides it)")


LABEL_KINDS = (*CLASSIFIER_KINDS, *LLM_KINDS)  # BERT classifiers, and LLMs that score the label words


def model_bio_mode(manifest: dict[str, Any]) -> str | None:
    """A BERT classifier's bio head, or the bio mode of an LLM's prompt ("none": the model reads no bios)."""
    return manifest.get("bio_mode") or (manifest.get("prompt") or {}).get("bio_mode")


def check_model(path: str) -> dict[str, Any]:
    """Verify the classifier artifact on the driver, before the pipeline reads any input; return its manifest.

    A local folder gets the full check of `verify_artifact` (every file listed and matching its sha256, every path
    inside the folder, labels and bio_mode consistent with config.json). A remote one (gs://) gets what can be read
    cheaply: the manifest's shape and paths, every listed file's size, and config.json (+ labels.txt) matched against
    their sha256 and checked for the same consistency; the workers verify their local copy in full when they load it.
    """
    if "://" not in path:
        if not os.path.isdir(path):
            raise ArtifactError(missing_model_help(path))
        return verify_artifact(path, LABEL_KINDS)
    manifest_path = FileSystems.join(path, MANIFEST)
    if not FileSystems.exists(manifest_path):
        raise ArtifactError(f"{missing_model_help(path)} (no {MANIFEST} found there)")

    def read(rel: str) -> bytes:
        with FileSystems.open(FileSystems.join(path, rel)) as fh:
            return fh.read()

    manifest = parse_manifest(manifest_path, read(MANIFEST))
    if manifest.get("kind") not in LABEL_KINDS:
        raise ArtifactError(f"{path!r} holds a {manifest.get('kind')!r} artifact, expected one of {LABEL_KINDS}")
    check_manifest(path, manifest)
    for rel, meta in manifest["files"].items():
        found = FileSystems.match([FileSystems.join(path, rel)])[0].metadata_list
        if not found or found[0].size_in_bytes != meta["bytes"]:
            raise ArtifactError(f"{path!r}: file {rel!r} listed in the manifest is missing or has the wrong size")
    if manifest["kind"] in CLASSIFIER_KINDS:
        check_classifier(path, manifest, read)
    elif not manifest.get("labels"):
        raise ArtifactError(f"{path!r}: the {manifest['kind']} manifest names no labels")
    return manifest


def fetch_artifact(path: str, cache_root: str | None = None) -> str:
    """Copy a remote artifact folder (the files its manifest lists) to local disk once per machine; return the copy.

    The manifest's paths are checked first, so a bad one cannot write outside the copy; `load_classifier` then
    verifies the copy in full.
    """
    with FileSystems.open(FileSystems.join(path, MANIFEST)) as fh:
        raw = fh.read()
    manifest = parse_manifest(FileSystems.join(path, MANIFEST), raw)
    check_manifest(path, manifest)
    target = os.path.join(cache_root or os.path.join(tempfile.gettempdir(), "bioserc-models"),
                          hashlib.sha256(raw).hexdigest()[:16])
    if os.path.isfile(os.path.join(target, MANIFEST)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(target))
    for rel in manifest["files"]:
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with FileSystems.open(FileSystems.join(path, rel)) as src, open(os.path.join(tmp, rel), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    with open(os.path.join(tmp, MANIFEST), "wb") as fh:  # written last: its presence marks a complete copy
        fh.write(raw)
    try:
        os.rename(tmp, target)
    except OSError:  # another worker process finished the same copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(slots=True)
class LabelRequest:
    conversation: Conversation
    # speaker -> bio text, or profile vector for a scores/latent model; speakers without one are encoded empty (zeros)
    bios: dict[str, Bio] = field(default_factory=dict)


@dataclass(slots=True)
class LabelOutcome:
    request: LabelRequest
    model_id: str
    labels: list[str]
    predictions: list[Prediction] | None = None  # one per utterance, in utterance order
    error: str | None = None


def _unlabelled(conv: Conversation) -> Conversation:
    """Gold labels are not the model's business here (a label outside its label set would fail the batch)."""
    return replace(conv, utterances=[replace(u, label=None) for u in conv.utterances])


class ClassifierModelHandler(ModelHandler[LabelRequest, LabelOutcome, UtteranceClassifier]):
    """Args:
        model_dir: an exported classifier folder with manifest.json (local, or gs:// on Dataflow).
        device: as `load_classifier`: "auto" (CUDA where the worker has a GPU), "cpu", "cuda[:N]"; "tensorrt" for
            ONNX artifacts.
        batch_utterances: utterances per forward pass inside `predict` (what bounds memory: `predict` sorts the
            conversations by length, cuts calls longer than its context into pieces and pads per forward pass).
        max_batch_size: conversations Beam hands to one `run_inference` call where Beam batches them. The pipelines
            batch upstream instead (`pipelines.records.BatchedModelHandler`): the reader cuts batches of
            --conversations-per-batch.
        threads: CPU threads of the model per worker process (None: all this process may use).
        llm_options: `load_classifier` options for LLM artifacts (e.g. scoring); refused for BERT classifiers.
        progress_total: utterances to expect, for a progress bar (None: no bar, 0: unknown total; shown by
            in-process runners only).
    """

    def __init__(self, model_dir: str, device: str = "auto", batch_utterances: int = 256, max_batch_size: int = 16,
                 progress_total: int | None = None, threads: int | None = None,
                 llm_options: dict[str, Any] | None = None):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.manifest = check_model(model_dir)
        self.model_dir, self.device, self.batch_utterances = model_dir, device, batch_utterances
        self.threads = threads or None  # None: the runtime's default (every CPU this process may use)
        self.llm_options = llm_options or {}
        if self.llm_options and self.manifest["kind"] not in LLM_KINDS:
            raise ArtifactError(f"{sorted(self.llm_options)} apply to LLM models only; {model_dir!r} holds a "
                                f"{self.manifest['kind']} artifact")
        self.progress_total = progress_total
        self._bar = None

    def load_model(self) -> UtteranceClassifier:
        local = fetch_artifact(self.model_dir) if "://" in self.model_dir else self.model_dir
        model = load_classifier(local, self.device, self.threads, **self.llm_options)
        logger.info("loaded classifier %s (%s, labels %s) on %s", local, model.model_id, model.labels, self.device)
        if self.progress_total is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.progress_total or None, desc="labeling", unit="utt")
        return model

    def _predict(self, requests: Sequence[LabelRequest], model: UtteranceClassifier) -> list[LabelOutcome]:
        convs = [_unlabelled(r.conversation) for r in requests]
        bios = {(r.conversation.id, s): b for r in requests for s, b in r.bios.items()}
        by_conv: dict[str, list[Prediction]] = {c.id: [] for c in convs}
        for p in model.predict(convs, bios, batch_size=len(convs), max_utterances=self.batch_utterances):
            by_conv[p.conversation_id].append(p)
        out = []
        for r in requests:
            preds, n = by_conv[r.conversation.id], len(r.conversation.utterances)
            error = None if len(preds) == n else f"classifier returned {len(preds)} predictions for {n} utterances"
            out.append(LabelOutcome(r, model.model_id, list(model.labels), None if error else preds, error))
        return out

    def run_inference(self, batch: Sequence[LabelRequest], model: UtteranceClassifier,
                      inference_args: dict[str, Any] | None = None) -> Iterable[LabelOutcome]:
        try:
            outcomes = self._predict(batch, model)
        except Exception as err:  # the dead-letter boundary: find the conversation that fails and keep the rest
            if len(batch) > 1:
                logger.warning("classifier failed on a batch of %d (%s); retrying one conversation at a time",
                               len(batch), err)
                return [o for r in batch for o in self.run_inference([r], model)]
            logger.warning("classifier failed on conversation %s: %s", batch[0].conversation.id, err)
            outcomes = [LabelOutcome(batch[0], model.model_id, list(model.labels),
                                     error=f"{type(err).__name__}: {err}")]
        if self._bar is not None:
            self._bar.update(sum(len(o.request.conversation.utterances) for o in outcomes))
        return outcomes

    def get_metrics_namespace(self) -> str:
        return "bioserc_classifier"


def utterance_rows(outcome: LabelOutcome) -> list[dict[str, Any]]:
    """One row per utterance, with what joins it back to the call: source file and format, the vendor's own turn id
    (`source_id`), the text exactly as the source had it, and the times. `bio` is the speaker's bio text (null for a
    profile vector, which is no text to read)."""
    conv = outcome.request.conversation
    bios = {s: b for s, b in outcome.request.bios.items() if isinstance(b, str)}
    assert outcome.predictions is not None, f"conversation {conv.id} has no predictions"
    source = {"source_path": conv.metadata.get("source_path"), "source_format": conv.metadata.get("source_format")}
    return [{"conversation_id": conv.id, "index": u.index, "speaker": u.speaker, "role": u.role, "text": u.text,
             "original_text": u.original_text if u.original_text is not None else u.text, "start_ms": u.start_ms,
             "end_ms": u.end_ms, **source, "source_id": _source_id(u.metadata.get("source_id")),
             "gold_label": u.label, "label": p.label,
             "probs": {name: round(float(x), 6) for name, x in zip(outcome.labels, p.probs, strict=True)},
             "bio": bios.get(u.speaker), "model_id": outcome.model_id}
            for u, p in zip(conv.utterances, outcome.predictions, strict=True)]


def _source_id(value: Any) -> str | None:
    return None if value is None else str(value)


def parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in PARQUET_SCHEMA.names}


class EmitResults(beam.DoFn):
    """A batch of (request, outcome) -> the records it carries, then utterance rows (JSONL and Parquet), a summary and
    a calls-table row per labelled conversation, a dead letter per utterance of a failed one, the batch's archive
    partial (its labelled calls in an `ArchiveCombineFn` accumulator, merged by the driver) and its counts."""

    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds
        self.archive = ArchiveCombineFn(thresholds)

    def process(self, batch: Batch):
        yield from batch.records
        c = dict.fromkeys(("conversations_labeled", "utterances_labeled", "conversations_failed", "utterances_failed"),
                          0)
        totals = self.archive.create_accumulator()
        for _, outcome in batch:
            conv = outcome.request.conversation
            if outcome.error is None:
                rows = utterance_rows(outcome)
                c["conversations_labeled"] += 1
                c["utterances_labeled"] += len(rows)
                for row in rows:
                    yield UTTERANCES, row
                    yield PARQUET, parquet_row(row)
                summary = summarise(rows, self.thresholds)
                yield CONVERSATIONS, summary
                yield CALLS, calls_row(summary)
                totals = self.archive.add_input(totals, summary)
                continue
            c["conversations_failed"] += 1
            c["utterances_failed"] += len(conv.utterances)
            for u in conv.utterances:
                yield DEAD, {
                    "stage": "classify", "path": conv.metadata.get("source_path"), "record": f"{conv.id} utterance "
                    f"{u.index}", "conversation_id": conv.id, "index": u.index, "field": None, "reason": outcome.error,
                    "utterances": 1, "model_id": outcome.model_id,
                    "raw": json.dumps(u.to_dict(), ensure_ascii=False)[:RAW_LIMIT]}
        if totals.calls:
            yield ARCHIVE_PARTS, totals.to_dict()
        yield from ledger("emit", batch.key, **c, utterances_dead_lettered=c["utterances_failed"])


__all__ = ["ClassifierModelHandler", "EmitResults", "LabelOutcome", "LabelRequest", "PARQUET_SCHEMA", "check_model",
           "fetch_artifact", "parquet_row", "utterance_rows"]
