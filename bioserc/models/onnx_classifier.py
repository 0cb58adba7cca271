"""Label utterances with an exported ONNX classifier (kind onnx-classifier, see export/onnx_classifier.py).

The same `Collator` and the same length-sorted conversation batches as `predict.predict` build the inputs, so a
conversation is cut into exactly the windows, speakers and bios the PyTorch model sees. Per batch: the encoder graph
pools every window (and, once, every distinct bio of the batch), numpy scatters the window vectors into
(conversations x utterances) slots, and the head graph returns the logits. A scores/latent profile model's speaker
vectors go to the head as they are (it projects them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bioserc.artifacts import CONFIG_FILE, artifact_file, manifest_id, verify_artifact
from bioserc.batching import length_sorted_chunks
from bioserc.models.collate import Bio, BioKey, Collator
from bioserc.models.folder_tokenizer import FolderTokenizer
from bioserc.models.int8_graph import exact_int8_flags, int8_encoder, use_int8
from bioserc.models.predict import Prediction, predict_conversations
from bioserc.models.settings import ClassifierSettings
from bioserc.runtime import make_session, ort_providers
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)

# Per encoder call: at most ENCODE_CHUNK sequences and ENCODE_TOKENS padded tokens. The activations (and what ONNX
# Runtime's arena keeps of them) follow the tokens of a call, so this bounds memory whatever the batch, the call
# length or the encoder (docs/BENCHMARKS.md, "Memory per call").
ENCODE_CHUNK = 256
ENCODE_TOKENS = 512


class OnnxClassifier:
    """Args:
    directory: an onnx-classifier artifact; its checksums are verified before any session is created.
    provider: "auto" (TensorRT, CUDA, CPU, whichever onnxruntime offers), "tensorrt", "cuda" or "cpu".
    threads: intra-op threads per session (default: the CPUs this process may use).
    pad_to_max: pad every encoder call to the model's max_length / bio_max_length instead of to the longest
        window of the batch: slower on CPU, but a fixed shape spares the TensorRT EP engine rebuilds.
    manifest: the manifest `verify_artifact` already returned for `directory` (skips hashing twice).
    int8: "auto" runs the encoder's int8-compute graph (`bioserc.models.int8_graph`: 2.3x the shipped graph,
        99% of its labels) where the artifact is calibrated for it, the session is CPU-only and the CPU has exact
        int8 dot products (VNNI, AMX); "on" insists (an error where it cannot); "off" runs the shipped graph.
    """

    def __init__(
        self,
        directory: str,
        provider: str = "auto",
        threads: int | None = None,
        pad_to_max: bool = False,
        manifest: dict[str, Any] | None = None,
        int8: str = "auto",
    ):
        manifest = manifest or verify_artifact(directory, "onnx-classifier")  # given = already verified by the caller
        # labels and bio_mode: checked against the manifest's by verify_artifact
        self.config = ClassifierSettings.from_file(artifact_file(directory, manifest, CONFIG_FILE))
        self.labels = list(self.config.labels)
        self.bio_mode = self.config.bio_mode
        self.model_id = manifest_id(directory)
        self.manifest = manifest
        self.pad_to_max = pad_to_max
        self.tokenizer = FolderTokenizer(directory)
        self.collator = Collator(self.tokenizer, self.config, tensors="np")
        graphs = manifest.get("graphs") or {"encoder": "encoder.onnx", "head": "head.onnx"}
        providers = ort_providers(provider)
        encoder = artifact_file(directory, manifest, graphs["encoder"])
        self.int8 = use_int8(int8, manifest, providers, exact_int8_flags())
        if self.int8:
            encoder = int8_encoder(encoder, manifest)
            logger.info("%s: the encoder computes in int8 (%s)", directory, encoder)
        self.encoder = make_session(encoder, providers, threads)
        self.head = make_session(artifact_file(directory, manifest, graphs["head"]), providers, threads)
        self.providers = self.encoder.get_providers()
        self._head_inputs = {i.name for i in self.head.get_inputs()}

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pool_mask: np.ndarray, width: int | None = None
    ) -> np.ndarray:
        """Pooled encoder states (N, H), at most `ENCODE_CHUNK` sequences and `ENCODE_TOKENS` tokens per encoder call.

        Sequences are taken in length order and each call is padded to its own longest one (or to `width`, a fixed
        length): memory stays bounded for a call of thousands of turns, and short windows are not padded to long ones.
        """
        lengths = attention_mask.sum(1)
        pad_id = self.tokenizer.pad_token_id or 0
        pooled: np.ndarray | None = None
        sizes = [width or int(n) for n in lengths.tolist()]
        for rows in length_sorted_chunks(sizes, ENCODE_CHUNK, ENCODE_TOKENS):
            size = max(max(sizes[i] for i in rows), 1)
            used = min(size, input_ids.shape[1])
            ids = np.full((len(rows), size), pad_id, dtype=np.int64)
            mask, pool = np.zeros((len(rows), size), dtype=np.int64), np.zeros((len(rows), size), dtype=np.float32)
            ids[:, :used], mask[:, :used], pool[:, :used] = (
                input_ids[rows, :used],
                attention_mask[rows, :used],
                pool_mask[rows, :used],
            )
            out = self.encoder.run(None, {"input_ids": ids, "attention_mask": mask, "pool_mask": pool})[0]
            if pooled is None:
                pooled = np.empty((len(lengths), out.shape[-1]), dtype=np.float32)
            pooled[rows] = out
        assert pooled is not None, "encode needs at least one sequence"
        return pooled

    def logits(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """(B, L, C) logits for one `Collator` batch (the keyword arguments `BiosercBert.forward` takes, as numpy
        arrays or CPU torch tensors)."""
        x = {k: np.asarray(v) for k, v in inputs.items()}
        pooled = self.encode(
            x["input_ids"], x["attention_mask"], x["target_mask"], self.config.max_length if self.pad_to_max else None
        )
        n_conv, n_utt = x["utt_mask"].shape
        slots = np.zeros((n_conv * n_utt, pooled.shape[-1]), dtype=np.float32)
        slots[x["utt_position"]] = pooled
        feeds: dict[str, Any] = {
            "utterances": slots.reshape(n_conv, n_utt, -1),
            "utterance_mask": x["utt_mask"],
            "utterance_speaker": x["utt_speaker"],
        }
        if self.bio_mode != "none":
            feeds["speaker_mask"] = x["speaker_mask"]
            if self.collator.vectors:
                feeds["speaker_profiles"] = x["speaker_profile"]  # (B, S, D): the head projects them
            else:
                bios = self.encode(
                    x["bio_input_ids"],
                    x["bio_attention_mask"],
                    x["bio_attention_mask"],
                    self.config.bio_max_length if self.pad_to_max else None,
                )
                feeds["speaker_bios"] = bios[x["speaker_bio"]]  # (B, S, H): each distinct bio was encoded once
        return self.head.run(None, {k: v for k, v in feeds.items() if k in self._head_inputs})[0]

    def predict(
        self,
        conversations: Sequence[Conversation],
        bios: Mapping[BioKey, Bio] | None = None,
        batch_size: int = 8,
        progress: bool = False,
        max_utterances: int | None = None,
    ) -> list[Prediction]:
        """One `Prediction` per utterance, in input order (as `bioserc.models.predict.predict`)."""
        return predict_conversations(
            conversations,
            bios,
            self.collator,
            self.labels,
            lambda batch: self.logits(batch.inputs),
            batch_size,
            max_utterances,
            progress,
        )
