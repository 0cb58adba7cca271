"""Length-sorted batching of prompts: the one grouping every LLM path uses (bio backends, bio extraction, LLM scoring).

Items of similar length share a batch, so left padding wastes little compute. Plain Python on purpose: the bio
extractor and the HTTP backend must not pull in torch just to order their prompts. Conversation batches for the
BERT classifier, with an utterance budget and seeded shuffling, are `bioserc.models.collate.length_sorted_batches`.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_sorted_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of `lengths` in ascending length order (ties keep input order), cut into batches of `size`."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + size] for start in range(0, len(order), size)]
