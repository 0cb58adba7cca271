"""Label every utterance of some conversations with a trained `BiosercBert` (used by evaluation and pipelines)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from tqdm import tqdm

from bioserc.models.bioserc_bert import BiosercBert
from bioserc.models.collate import BioKey, Collator, length_sorted_batches
from bioserc.schema import Conversation


logger = logging.getLogger(__name__)


class Prediction(NamedTuple):
    conversation_id: str
    index: int  # Utterance.index
    label: str
    probs: list[float]  # softmax over the model's labels, in `model.config.labels` order


@torch.inference_mode()
def predict(model: BiosercBert, conversations: Sequence[Conversation], bios: Mapping[BioKey, str] | None = None,
            batch_size: int = 8, progress: bool = False) -> list[Prediction]:
    """One `Prediction` per utterance, in input order; conversations are batched by length for speed.

    Speakers without a bio are encoded with an empty one (as training does) and counted in a warning.
    """
    was_training = model.training
    model.eval()
    collator = Collator(model.tokenizer, model.config)
    labels = model.config.labels
    by_conv: dict[int, list[Prediction]] = {}
    n_missing = 0
    try:
        for idx in tqdm(length_sorted_batches(conversations, batch_size), desc="predicting", unit="batch",
                        disable=not progress):
            batch = collator([conversations[i] for i in idx], bios).to(model.device)
            n_missing += len(batch.bio_missing)
            probs = model(**batch.inputs).float().softmax(-1).cpu()
            for b, i in enumerate(idx):
                conv = conversations[i]
                by_conv[i] = [Prediction(conv.id, u.index, labels[int(p.argmax())], p.tolist())
                              for u, p in zip(conv.utterances, probs[b], strict=False)]
    finally:
        model.train(was_training)
    if n_missing:
        logger.warning("%d speaker(s) had no bio and were classified with an empty one", n_missing)
    return [p for i in range(len(conversations)) for p in by_conv[i]]
