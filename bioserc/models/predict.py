"""Label every utterance of some conversations with a classifier (used by evaluation, pipelines and both runtimes).

`predict_conversations` is the one batching loop of the PyTorch and the ONNX classifier: long calls are cut into
overlapping pieces, pieces are batched by length under a conversation and an utterance budget, and each runtime only
supplies its logits function (numpy out: the ONNX runtime labels without importing torch). Memory therefore follows
`max_utterances` and `MAX_CONTEXT`, never the call length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm import tqdm

from bioserc.models.collate import Batch, Bio, BioKey, Collator, length_sorted_batches, missing_bios
from bioserc.schema import Conversation


if TYPE_CHECKING:
    from bioserc.models.bioserc_bert import BiosercBert

logger = logging.getLogger(__name__)

# The conversation head attends over every utterance of what it is given (memory grows with the square of that),
# and the corpora models learn from hold dialogues of a few dozen turns: a longer call is labelled in pieces of at
# most MAX_CONTEXT utterances, each utterance with at least CONTEXT_OVERLAP turns of context on both sides.
MAX_CONTEXT = 256
CONTEXT_OVERLAP = 32


class Prediction(NamedTuple):
    conversation_id: str
    index: int  # Utterance.index
    label: str
    probs: list[float]  # softmax over the model's labels, in `model.config.labels` order


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of conversation number `source`: predictions are kept for positions `keep` (offset `start` in the call)."""

    source: int
    conversation: Conversation
    start: int
    keep: range


def pieces(
    conversations: Sequence[Conversation], max_context: int = MAX_CONTEXT, overlap: int = CONTEXT_OVERLAP
) -> list[Piece]:
    """Conversations of at most `max_context` utterances as they are; longer ones as overlapping pieces."""
    step = max_context - 2 * overlap
    if step < 1:
        raise ValueError(f"max_context {max_context} must exceed twice the overlap {overlap}")
    out = []
    for i, conv in enumerate(conversations):
        n = len(conv.utterances)
        if n <= max_context:
            out.append(Piece(i, conv, 0, range(n)))
            continue
        for begin in range(0, n, step):
            lo, hi = max(0, begin - overlap), min(n, begin + step + overlap)
            out.append(
                Piece(
                    i,
                    replace(conv, utterances=conv.utterances[lo:hi]),
                    lo,
                    range(begin - lo, min(begin + step, n) - lo),
                )
            )
    return out


def predict_conversations(
    conversations: Sequence[Conversation],
    bios: Mapping[BioKey, Bio] | None,
    collator: Collator,
    labels: Sequence[str],
    logits: Callable[[Batch], np.ndarray],
    batch_size: int = 8,
    max_utterances: int | None = None,
    progress: bool = False,
) -> list[Prediction]:
    """One `Prediction` per utterance, in input order; `logits(batch)` returns (B, L, C) for one `Collator` batch.

    Speakers without a bio are encoded with an empty one (a zero vector for the scores/latent profiles, as training
    does) and counted in a warning.
    """
    parts = pieces(conversations)
    found: dict[int, list[tuple[int, Prediction]]] = {i: [] for i in range(len(conversations))}
    batches = length_sorted_batches([p.conversation for p in parts], batch_size, max_utterances=max_utterances)
    for idx in tqdm(batches, desc="predicting", unit="batch", disable=not progress):
        probs = softmax(logits(collator([parts[i].conversation for i in idx], bios)))
        for b, i in enumerate(idx):
            piece = parts[i]
            for k in piece.keep:
                u, p = piece.conversation.utterances[k], probs[b, k]
                found[piece.source].append(
                    (piece.start + k, Prediction(piece.conversation.id, u.index, labels[int(p.argmax())], p.tolist()))
                )
    if collator.use_bios and (n_missing := len(missing_bios(conversations, bios))):
        logger.warning(
            "%d speaker(s) had no bio and were classified with %s",
            n_missing,
            f"a zero {collator.profile} vector" if collator.vectors else "an empty one",
        )
    return [p for i in range(len(conversations)) for _, p in sorted(found[i], key=lambda kp: kp[0])]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float32 (as the models compute)."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def predict(
    model: BiosercBert,
    conversations: Sequence[Conversation],
    bios: Mapping[BioKey, Bio] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    max_utterances: int | None = None,
) -> list[Prediction]:
    """`predict_conversations` with a PyTorch `BiosercBert` (in eval mode for the call)."""
    was_training = model.training
    model.eval()
    try:
        return predict_conversations(
            conversations,
            bios,
            Collator(model.tokenizer, model.config),
            model.config.labels,
            lambda batch: _torch_logits(model, batch),
            batch_size,
            max_utterances,
            progress,
        )
    finally:
        model.train(was_training)


def _torch_logits(model: BiosercBert, batch: Batch) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(**batch.to(model.device).inputs).float().cpu().numpy()
