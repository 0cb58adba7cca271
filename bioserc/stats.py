"""Corpus statistics for `bioserc stats`: what is in an archive before anyone spends compute on it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bioserc.schema import Conversation


LENGTH_BINS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


@dataclass
class CorpusStats:
    conversations: int = 0
    utterances: int = 0
    speaker_turns: int = 0  # sum over conversations of distinct speakers = number of bios the paper's recipe writes
    speakers: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)

    def add(self, conv: Conversation) -> None:
        self.conversations += 1
        self.utterances += len(conv.utterances)
        self.speaker_turns += len(conv.speakers)
        self.lengths.append(len(conv.utterances))
        for u in conv.utterances:
            self.speakers[u.speaker] += 1
            self.roles[u.role or "-"] += 1
            self.labels[u.label or "(unlabelled)"] += 1

    def length_histogram(self) -> list[tuple[str, int]]:
        """Counts of conversation lengths in bins [1], [2-4], [5-9], ... [500+]."""
        edges = list(LENGTH_BINS) + [None]
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            name = f"{lo}+" if hi is None else (f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}")
            rows.append((name, sum(1 for n in self.lengths if n >= lo and (hi is None or n < hi))))
        return rows

    def to_dict(self) -> dict:
        return {
            "conversations": self.conversations,
            "utterances": self.utterances,
            "distinct_speakers": len(self.speakers),
            "conversation_speaker_pairs": self.speaker_turns,
            "labels": dict(self.labels.most_common()),
            "roles": dict(self.roles.most_common()),
            "length_histogram": dict(self.length_histogram()),
            "max_length": max(self.lengths, default=0),
        }

    def render(self) -> str:
        d = self.to_dict()
        lines = [
            f"conversations             {d['conversations']:>8}",
            f"utterances                {d['utterances']:>8}",
            f"distinct speakers         {d['distinct_speakers']:>8}",
            f"(conversation, speaker)   {d['conversation_speaker_pairs']:>8}",
            "",
            "label distribution",
        ]
        total = max(self.utterances, 1)
        for label, n in self.labels.most_common():
            lines.append(f"  {label:<16} {n:>7}  {100 * n / total:5.1f}%  {'#' * round(40 * n / total)}")
        if set(self.roles) != {"-"}:
            lines += ["", "roles"] + [f"  {r:<16} {n:>7}" for r, n in self.roles.most_common()]
        lines += ["", "conversation length (utterances)"]
        peak = max((n for _, n in self.length_histogram()), default=1) or 1
        for name, n in self.length_histogram():
            lines.append(f"  {name:>8} {n:>7}  {'#' * round(40 * n / peak)}")
        return "\n".join(lines)


def compute_stats(conversations: Iterable[Conversation]) -> CorpusStats:
    stats = CorpusStats()
    for conv in conversations:
        stats.add(conv)
    return stats
