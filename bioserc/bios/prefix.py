"""Which prompts of a batch share a token prefix, and how to pack them into generate calls.

Per-speaker bio prompts differ only after the transcript, so the speakers of one conversation share most of their
tokens. Grouping works on token ids, never on strings: a prefix is shared only when the exact same tokens start every
member, which is what lets its KV cache be computed once and branched without changing any prompt. Plain Python, so
it can be tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PrefixGroup:
    members: list[int] = field(default_factory=list)  # indices into the batch
    shared: int = 0  # tokens every member starts with, prefilled once; always below each member's length


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(sequences: list[list[int]], min_shared: int = 16, max_members: int = 64) -> list[PrefixGroup]:
    """Group sequences so that the tokens prefilled once instead of per member are as many as possible.

    Sorted by tokens, sequences with long common prefixes are neighbours, and any group worth having is a run of
    neighbours. A run of m members whose common prefix is s tokens saves (m - 1) * s; the runs are chosen by dynamic
    programming over the sorted order, so a prefix every prompt has (the system message) never merges two
    conversations at the cost of their own, longer transcripts. Each member keeps at least one token outside the
    prefix, because a generate call needs one uncached token to start from.
    """
    order = sorted(range(len(sequences)), key=lambda k: sequences[k])
    cap = [len(sequences[i]) - 1 for i in order]
    adjacent = [common_prefix(sequences[a], sequences[b]) for a, b in zip(order, order[1:], strict=False)]
    best = [0] * (len(order) + 1)  # best[j]: tokens saved by the best grouping of the first j sorted sequences
    cut = [0] * (len(order) + 1)  # where the last run of that grouping starts
    for j in range(1, len(order) + 1):
        best[j], cut[j] = best[j - 1], j - 1
        shared = cap[j - 1]
        for i in range(j - 2, max(-1, j - 1 - max_members), -1):  # the run order[i:j]
            shared = min(shared, adjacent[i], cap[i])
            if shared < min_shared:
                break
            if best[i] + (j - 1 - i) * shared > best[j]:
                best[j], cut[j] = best[i] + (j - 1 - i) * shared, i
    groups = []
    j = len(order)
    while j > 0:
        i = cut[j]
        groups.append(PrefixGroup(order[i:j], min(cap[i:j] + adjacent[i : j - 1])))
        j = i
    return groups[::-1]


def split_groups(groups: list[PrefixGroup], size: int) -> list[PrefixGroup]:
    """Groups of at most `size` members (a group larger than a batch is prefilled once per piece)."""
    out = []
    for g in groups:
        for start in range(0, len(g.members), size):
            out.append(PrefixGroup(g.members[start : start + size], g.shared))
    return out


def pack_groups(groups: list[PrefixGroup], lengths: list[int], size: int) -> list[list[PrefixGroup]]:
    """Length-bucketed batches of at most `size` prompts, a group never split across two batches.

    Groups are ordered by their longest member, so a batch holds prompts of similar length and pads little.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    ordered = sorted(split_groups(groups, size), key=lambda g: max(lengths[i] for i in g.members))
    batches: list[list[PrefixGroup]] = []
    rows = 0
    for g in ordered:
        if not batches or rows + len(g.members) > size:
            batches.append([])
            rows = 0
        batches[-1].append(g)
        rows += len(g.members)
    return batches
