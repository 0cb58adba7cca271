"""The labeling pipeline's model step: `ClassifierModelHandler` for RunInference, and what it takes and gives.

The handler loads `load_classifier(model_dir)` once per worker process and labels a batch of conversations (each with
its speakers' bios: `LabelRequest`) in one `predict` call. A batch that fails is retried one conversation at a time, so
a conversation the model cannot label costs only itself: `LabelOutcome.error` is set and all its utterances go to the
dead letter. The artifact is verified on the driver when the handler is built (`check_model`: a missing or tampered
model fails before any work) and again by `load_classifier` on every worker. `--model gs://...` folders are read
through Beam's filesystems and copied to local disk on the workers (`bioserc.artifacts.fetch_artifact`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from bioserc.artifacts import LLM_KINDS, ArtifactError, check_label_model, fetch_artifact, manifest_id
from bioserc.models.classifier import UtteranceClassifier, load_classifier
from bioserc.models.collate import Bio
from bioserc.models.int8_graph import UNCALIBRATED
from bioserc.models.predict import Prediction
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)


def _open_in(path: str) -> Callable[[str], IO[bytes]]:
    """Opens a file of the (remote) folder `path` by its relative path, through Beam's filesystems."""
    return lambda rel: FileSystems.open(FileSystems.join(path, rel))


def _size_in(path: str) -> Callable[[str], int | None]:
    def size(rel: str) -> int | None:
        found = FileSystems.match([FileSystems.join(path, rel)])[0].metadata_list
        return found[0].size_in_bytes if found else None

    return size


def check_model(path: str) -> dict[str, Any]:
    """Verify the classifier artifact on the driver, before the pipeline reads any input; return its manifest
    (`bioserc.artifacts.check_label_model`: in full for a local folder, cheaply for a remote one)."""
    if "://" not in path:
        return check_label_model(path)
    return check_label_model(path, _open_in(path), _size_in(path))


def fetch_model(path: str, cache_root: str | None = None) -> str:
    """A local copy of a remote artifact folder, made once per machine (`bioserc.artifacts.fetch_artifact`)."""
    return fetch_artifact(path, _open_in(path), cache_root)


def model_id(path: str) -> str:
    """The `model_id` the rows of the model at `path` (local or remote) carry: `bioserc.artifacts.manifest_id`."""
    return manifest_id(path) if "://" not in path else manifest_id(path, _open_in(path))


def model_bio_mode(manifest: dict[str, Any]) -> str | None:
    """A BERT classifier's bio head, or the bio mode of an LLM's prompt ("none": the model reads no bios)."""
    return manifest.get("bio_mode") or (manifest.get("prompt") or {}).get("bio_mode")


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
    int8: as `load_classifier`: "auto" (the int8-compute encoder where the artifact and the worker's CPU allow),
        "on", "off".
    llm_options: `load_classifier` options for LLM artifacts (e.g. scoring); refused for BERT classifiers.
    progress_total: utterances to expect, for a progress bar (None: no bar, 0: unknown total; shown by
        in-process runners only).
    """

    def __init__(
        self,
        model_dir: str,
        device: str = "auto",
        batch_utterances: int = 256,
        max_batch_size: int = 16,
        progress_total: int | None = None,
        threads: int | None = None,
        llm_options: dict[str, Any] | None = None,
        int8: str = "auto",
    ):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.manifest = check_model(model_dir)
        self.model_dir, self.device, self.batch_utterances = model_dir, device, batch_utterances
        self.threads = threads or None  # None: the runtime's default (every CPU this process may use)
        if int8 == "on" and not self.manifest.get("int8_compute"):  # the CPU is each worker's to check
            raise ArtifactError(f"--int8 on: {model_dir!r} {UNCALIBRATED}")
        self.int8 = int8
        self.llm_options = llm_options or {}
        if self.llm_options and self.manifest["kind"] not in LLM_KINDS:
            raise ArtifactError(
                f"{sorted(self.llm_options)} apply to LLM models only; {model_dir!r} holds a "
                f"{self.manifest['kind']} artifact"
            )
        self.progress_total = progress_total
        self._bar = None

    def load_model(self) -> UtteranceClassifier:
        local = fetch_model(self.model_dir) if "://" in self.model_dir else self.model_dir
        model = load_classifier(local, self.device, self.threads, self.int8, **self.llm_options)
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

    def run_inference(
        self, batch: Sequence[LabelRequest], model: UtteranceClassifier, inference_args: dict[str, Any] | None = None
    ) -> Iterable[LabelOutcome]:
        try:
            outcomes = self._predict(batch, model)
        except Exception as err:  # the dead-letter boundary: find the conversation that fails and keep the rest
            if len(batch) > 1:
                logger.warning(
                    "classifier failed on a batch of %d (%s); retrying one conversation at a time", len(batch), err
                )
                return [o for r in batch for o in self.run_inference([r], model)]
            logger.warning("classifier failed on conversation %s: %s", batch[0].conversation.id, err)
            outcomes = [
                LabelOutcome(batch[0], model.model_id, list(model.labels), error=f"{type(err).__name__}: {err}")
            ]
        if self._bar is not None:
            self._bar.update(sum(len(o.request.conversation.utterances) for o in outcomes))
        return outcomes

    def get_metrics_namespace(self) -> str:
        return "bioserc_classifier"
