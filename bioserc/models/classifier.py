"""Load any exported utterance classifier by its manifest and label conversations with it.

Pipelines and evaluation call `load_classifier(dir)`: the manifest's kind picks the runtime (PyTorch or ONNX
Runtime), and its checksums, paths and label order are verified (`verify_artifact`) before any weights are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bioserc.artifacts import artifact_file, manifest_hash, verify_artifact
from bioserc.devices import resolve_device
from bioserc.models.collate import BioKey
from bioserc.models.predict import Prediction
from bioserc.schema import Conversation


class UtteranceClassifier(Protocol):
    labels: list[str]
    model_id: str  # manifest hash: which exact artifact produced a prediction
    bio_mode: str

    def predict(self, conversations: Sequence[Conversation], bios: Mapping[BioKey, str] | None = None,
                batch_size: int = 8, progress: bool = False,
                max_utterances: int | None = None) -> list[Prediction]: ...


class TorchClassifier:
    """A `BiosercBert` folder written by training (kind pytorch-classifier)."""

    def __init__(self, directory: str, device: str = "cpu", manifest: dict[str, Any] | None = None):
        from bioserc.models.bioserc_bert import CONFIG_FILE, WEIGHTS_FILE, BiosercBert

        manifest = manifest or verify_artifact(directory, "pytorch-classifier")  # given = verified by the caller
        for name in (CONFIG_FILE, WEIGHTS_FILE):  # what from_pretrained opens: a clear error unless listed (=verified)
            artifact_file(directory, manifest, name)
        self.model = BiosercBert.from_pretrained(directory, device=device)
        self.labels = list(self.model.config.labels)
        self.bio_mode = self.model.config.bio_mode
        self.model_id = manifest_hash(directory)

    def predict(self, conversations, bios=None, batch_size=8, progress=False, max_utterances=None) -> list[Prediction]:
        from bioserc.models.predict import predict

        return predict(self.model, conversations, bios, batch_size, progress, max_utterances)


def load_classifier(directory: str, device: str = "cpu", threads: int | None = None,
                    **llm_options: Any) -> UtteranceClassifier:
    """The classifier in `directory`, verified against its manifest before anything is loaded.

    `device` is a torch device for PyTorch artifacts (`bioserc.devices.resolve_device`: "auto" = CUDA when available)
    and picks the ONNX Runtime execution provider for ONNX ones: "cpu", "cuda" (or "cuda:N"), "tensorrt" or "auto".
    `threads` caps the CPU threads: the ONNX sessions' intra-op threads, or for PyTorch artifacts
    `torch.set_num_threads` (process-wide); None leaves each runtime's default (every CPU this process may use).
    `llm_options` (mode, base_model, dtype, ...) go to `LlmClassifier.from_pretrained` and are refused for others.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 (or None for automatic), got {threads}")
    manifest = verify_artifact(directory, ("pytorch-classifier", "onnx-classifier", "lora-adapter", "hf-llm"))
    llm = manifest["kind"] in ("lora-adapter", "hf-llm")
    if llm_options and not llm:
        raise ValueError(f"{sorted(llm_options)} apply to LLM artifacts only; {directory!r} holds a "
                         f"{manifest['kind']} artifact")
    if manifest["kind"] == "onnx-classifier":
        from bioserc.models.onnx_classifier import OnnxClassifier

        return OnnxClassifier(directory, provider=device.split(":", 1)[0], threads=threads, manifest=manifest)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if llm:
        from bioserc.models.llm_scoring import LlmClassifier

        return LlmClassifier.from_pretrained(directory, device=device, **llm_options)
    return TorchClassifier(directory, resolve_device(device), manifest)
