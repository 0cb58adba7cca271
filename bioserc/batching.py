"""Length-sorted batching of prompts: the one grouping every LLM path uses (bio backends, bio extraction, LLM scoring).

Items of similar length share a batch, so left padding wastes little compute. Plain Python on purpose: the bio
extractor and the HTTP backend must not pull in torch just to order their prompts. Conversation batches for the
BERT classifier, with an utterance budget and seeded shuffling, are `bioserc.models.collate.length_sorted_batches`.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_sorted_chunks(lengths: Sequence[int], size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of `lengths` in ascending length order (ties keep input order), cut into batches of `size`.

    With `max_tokens`, a batch also ends before its padded size (items x longest length) would pass it: what an
    encoder call holds in activations follows the tokens, not the number of sequences. A single item longer than
    `max_tokens` still gets a batch of its own.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"token budget must be at least 1, got {max_tokens}")
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        full = len(current) == size or (
            max_tokens is not None and (len(current) + 1) * max(lengths[i], 1) > max_tokens
        )
        if current and full:
            chunks.append(current)
            current = []
        current.append(i)
    return chunks + [current] if current else chunks
