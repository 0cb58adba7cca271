"""Load any exported utterance classifier by its manifest and label conversations with it.

Pipelines and evaluation call `load_classifier(dir)`: the manifest's kind picks the runtime (PyTorch or ONNX
Runtime), and its checksums, paths and label order are verified (`verify_artifact`) before any weights are read.
Kinds: pytorch-classifier and onnx-classifier (BERT-based BiosERC), lora-adapter and hf-llm (an LLM on PyTorch) and
onnx-llm (a merged LLM's ONNX export, scored on ONNX Runtime).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bioserc.artifacts import CLASSIFIER_KINDS, LABEL_KINDS, artifact_file, manifest_id, verify_artifact
from bioserc.devices import resolve_device
from bioserc.models.collate import Bio, BioKey
from bioserc.models.predict import Prediction
from bioserc.schema import Conversation


class UtteranceClassifier(Protocol):
    labels: list[str]
    model_id: str  # manifest hash: which exact artifact produced a prediction
    bio_mode: str

    def predict(
        self,
        conversations: Sequence[Conversation],
        bios: Mapping[BioKey, Bio] | None = None,
        batch_size: int = 8,
        progress: bool = False,
        max_utterances: int | None = None,
    ) -> list[Prediction]: ...


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
        self.model_id = manifest_id(directory)

    def predict(self, conversations, bios=None, batch_size=8, progress=False, max_utterances=None) -> list[Prediction]:
        from bioserc.models.predict import predict

        return predict(self.model, conversations, bios, batch_size, progress, max_utterances)


def load_classifier(
    directory: str, device: str = "cpu", threads: int | None = None, int8: str = "auto", **llm_options: Any
) -> UtteranceClassifier:
    """The classifier in `directory`, verified against its manifest before anything is loaded.

    `device` is a torch device for PyTorch artifacts (`bioserc.devices.resolve_device`: "auto" = CUDA when available)
    and picks the ONNX Runtime execution provider for ONNX ones: "cpu", "cuda" (or "cuda:N"), "tensorrt" or "auto"
    (an onnx-llm export: "cpu", "cuda" or "auto").
    `threads` caps the CPU threads: the ONNX sessions' intra-op threads, or for PyTorch artifacts
    `torch.set_num_threads` (process-wide); None leaves each runtime's default (every CPU this process may use).
    `int8` ("auto", "on", "off") picks an onnx-classifier's int8-compute encoder (`OnnxClassifier`); "on" is
    refused for other kinds.
    `llm_options` go to LLM artifacts and are refused for others: mode, scoring and max_new_tokens
    (`LlmClassifier`), and for PyTorch ones base_model and dtype (`LlmClassifier.from_pretrained`).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 (or None for automatic), got {threads}")
    manifest = verify_artifact(directory, LABEL_KINDS)
    kind = manifest["kind"]
    if int8 == "on" and kind != "onnx-classifier":
        raise ValueError(f"--int8 on applies to ONNX BERT classifiers only; {directory!r} holds a {kind} artifact")
    if llm_options and kind in CLASSIFIER_KINDS:
        raise ValueError(f"{sorted(llm_options)} apply to LLM artifacts only; {directory!r} holds a {kind} artifact")
    if kind == "onnx-llm":
        torch_only = sorted({"base_model", "dtype"} & set(llm_options))
        if torch_only:
            raise ValueError(
                f"{torch_only} apply to PyTorch LLM artifacts only; {directory!r} holds an {kind} "
                "export (merged fp32 weights)"
            )
        from bioserc.models.onnx_llm_scoring import OnnxLlmClassifier

        return OnnxLlmClassifier.from_artifact(directory, device.split(":", 1)[0], threads, manifest, **llm_options)
    if kind == "onnx-classifier":
        from bioserc.models.onnx_classifier import OnnxClassifier

        provider = device.split(":", 1)[0]
        return OnnxClassifier(directory, provider=provider, threads=threads, manifest=manifest, int8=int8)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if kind == "pytorch-classifier":
        return TorchClassifier(directory, resolve_device(device), manifest)
    from bioserc.models.llm_scoring import LlmClassifier  # imports torch: only for the PyTorch LLM kinds

    return LlmClassifier.from_pretrained(directory, device=device, **llm_options)
