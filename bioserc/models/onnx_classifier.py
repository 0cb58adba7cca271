"""Label utterances with an exported ONNX classifier (kind onnx-classifier, see export/onnx_classifier.py).

The same `Collator` and the same length-sorted conversation batches as `predict.predict` build the inputs, so a
conversation is cut into exactly the windows, speakers and bios the PyTorch model sees. Per batch: the encoder graph
pools every window (and, once, every distinct bio of the batch), numpy scatters the window vectors into
(conversations x utterances) slots, and the head graph returns the logits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bioserc.artifacts import manifest_hash, verify_artifact
from bioserc.models.bioserc_bert import CONFIG_FILE, BiosercBertConfig
from bioserc.models.collate import BioKey, Collator, length_sorted_batches
from bioserc.models.predict import Prediction
from bioserc.runtime import make_session, ort_providers
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)


class OnnxClassifier:
    """Args:
        directory: an onnx-classifier artifact; its checksums are verified before any session is created.
        provider: "auto" (TensorRT, CUDA, CPU, whichever onnxruntime offers), "tensorrt", "cuda" or "cpu".
        threads: intra-op threads per session (default: the CPUs this process may use).
        pad_to_max: pad every encoder call to the model's max_length / bio_max_length instead of to the longest
            window of the batch: slower on CPU, but a fixed shape spares the TensorRT EP engine rebuilds.
        manifest: the manifest `verify_artifact` already returned for `directory` (skips hashing twice).
    """

    def __init__(self, directory: str, provider: str = "auto", threads: int | None = None, pad_to_max: bool = False,
                 manifest: dict[str, Any] | None = None):
        manifest = manifest or verify_artifact(directory, "onnx-classifier")  # given = already verified by the caller
        from transformers import AutoTokenizer

        with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        meta.pop("encoder_config", None)
        self.config = BiosercBertConfig.from_dict(meta)
        self.labels = list(self.config.labels)
        if manifest.get("labels") and manifest["labels"] != self.labels:
            raise ValueError(f"{directory}: manifest labels {manifest['labels']} differ from config.json's")
        self.bio_mode = self.config.bio_mode
        self.model_id = manifest_hash(directory)
        self.manifest = manifest
        self.pad_to_max = pad_to_max
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.collator = Collator(self.tokenizer, self.config)
        graphs = manifest.get("graphs", {"encoder": "encoder.onnx", "head": "head.onnx"})
        providers = ort_providers(provider)
        self.encoder = make_session(os.path.join(directory, graphs["encoder"]), providers, threads)
        self.head = make_session(os.path.join(directory, graphs["head"]), providers, threads)
        self.providers = self.encoder.get_providers()
        self._head_inputs = {i.name for i in self.head.get_inputs()}

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray, pool_mask: np.ndarray,
               width: int | None = None) -> np.ndarray:
        """Pooled encoder states (N, H); `width` pads the token axis to a fixed length first."""
        if width is not None and input_ids.shape[1] < width:
            extra = width - input_ids.shape[1]
            pad_id = self.tokenizer.pad_token_id or 0
            input_ids = np.pad(input_ids, ((0, 0), (0, extra)), constant_values=pad_id)
            attention_mask = np.pad(attention_mask, ((0, 0), (0, extra)))
            pool_mask = np.pad(pool_mask, ((0, 0), (0, extra)))
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "pool_mask": pool_mask.astype(np.float32)}
        return self.encoder.run(None, feeds)[0]

    def logits(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        """(B, L, C) logits for one `Collator` batch (the keyword arguments `BiosercBert.forward` takes)."""
        x = {k: v.numpy() for k, v in inputs.items()}
        pooled = self.encode(x["input_ids"], x["attention_mask"], x["target_mask"],
                             self.config.max_length if self.pad_to_max else None)
        n_conv, n_utt = x["utt_mask"].shape
        slots = np.zeros((n_conv * n_utt, pooled.shape[-1]), dtype=np.float32)
        slots[x["utt_position"]] = pooled
        feeds: dict[str, Any] = {"utterances": slots.reshape(n_conv, n_utt, -1), "utterance_mask": x["utt_mask"],
                                 "utterance_speaker": x["utt_speaker"]}
        if self.bio_mode != "none":
            bios = self.encode(x["bio_input_ids"], x["bio_attention_mask"], x["bio_attention_mask"],
                               self.config.bio_max_length if self.pad_to_max else None)
            feeds["speaker_bios"] = bios[x["speaker_bio"]]  # (B, S, H): each distinct bio was encoded once
            feeds["speaker_mask"] = x["speaker_mask"]
        return self.head.run(None, {k: v for k, v in feeds.items() if k in self._head_inputs})[0]

    def predict(self, conversations: Sequence[Conversation], bios: Mapping[BioKey, str] | None = None,
                batch_size: int = 8) -> list[Prediction]:
        """One `Prediction` per utterance, in input order (as `bioserc.models.predict.predict`)."""
        by_conv: dict[int, list[Prediction]] = {}
        n_missing = 0
        for idx in length_sorted_batches(conversations, batch_size):
            batch = self.collator([conversations[i] for i in idx], bios)
            n_missing += len(batch.bio_missing)
            probs = torch.from_numpy(self.logits(batch.inputs)).float().softmax(-1)
            for b, i in enumerate(idx):
                conv = conversations[i]
                by_conv[i] = [Prediction(conv.id, u.index, self.labels[int(p.argmax())], p.tolist())
                              for u, p in zip(conv.utterances, probs[b], strict=False)]
        if n_missing:
            logger.warning("%d speaker(s) had no bio and were classified with an empty one", n_missing)
        return [p for i in range(len(conversations)) for p in by_conv[i]]
