"""The archive summary as a bounded accumulator: calls go in one at a time, partial totals merge in any order.

What it keeps does not grow with the archive: utterances per label (overall and per role: agent, customer, ...,
"unknown" for speakers without one), call-score histograms with fixed bins, escalation counts, and the
`review_calls` calls most worth reviewing (flagged calls, lowest call score first, then most escalations, then id).
Scores are summed as integers (1e-4 units, their precision), so merged partials give the same bits in any order: the
pipeline (one partial per batch, merged on the driver) and `bioserc summarize` (one pass) write the same archive.json.
`pipelines.analytics.ArchiveCombineFn` wraps it for Beam.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict
from typing import Any

from bioserc.analytics.thresholds import Thresholds


ARCHIVE_SCHEMA_VERSION = 1
BINS = 20  # call-score histogram: 20 bins of 0.1 over [-1, 1], the last one closed
UNIT = 10_000  # scores have 4 decimals
NO_ROLE = "unknown"
MAX_REASONS = 5  # per reviewed call; the rest is counted


def score_bin(score: float) -> int:
    """The histogram bin of a score, from its integer form (no float edge effects: -0.7 is in bin 3)."""
    return min(BINS - 1, (round(score * UNIT) + UNIT) * BINS // (2 * UNIT))


def bin_edges() -> list[float]:
    return [round(-1 + 2 * i / BINS, 2) for i in range(BINS + 1)]


def _review_rank(item: dict[str, Any]) -> tuple:
    return item["call_score"], -item["escalations"], item["conversation_id"]


def _review_item(summary: dict[str, Any]) -> dict[str, Any]:
    a = summary["analytics"]
    events = sorted((e for g in a["roles"] for e in g["escalations"]), key=lambda e: (e["first"], e["last"]))
    jump = events[0] if events else {"first": a["lowest"]["index"], "start_ms": a["lowest"]["start_ms"]}
    reasons = a["reasons"][:MAX_REASONS]
    if len(a["reasons"]) > MAX_REASONS:
        reasons.append(f"... and {len(a['reasons']) - MAX_REASONS} more")
    return {
        "conversation_id": summary["conversation_id"],
        "call_score": a["call_score"],
        "scored_group": a["scored_group"],
        "escalations": a["escalations"],
        "reasons": reasons,
        "jump_to": {"index": jump["first"], "start_ms": jump["start_ms"]},
    }


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n


def _new_role() -> dict[str, Any]:
    return {"calls": 0, "utterances": 0, "labels": {}, "histogram": [0] * BINS, "score_sum": 0}


class ArchiveTotals:
    """create (the constructor), `add` a call's summary, `merge` another partial, `extract` archive.json's content;
    `to_dict`/`from_dict` carry a partial through the pipeline's shards."""

    def __init__(self, review_calls: int):
        self.review_calls = review_calls
        self.calls = self.utterances = self.score_sum = self.flagged = self.escalated = 0
        self.labels: dict[str, int] = {}
        self.histogram = [0] * BINS
        self.escalations: dict[str, int] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.review: list[dict[str, Any]] = []

    def add(self, summary: dict[str, Any]) -> ArchiveTotals:
        a = summary["analytics"]
        self.calls += 1
        self.utterances += summary["utterances"]
        _add_counts(self.labels, summary["emotion_counts"])
        self.histogram[score_bin(a["call_score"])] += 1
        self.score_sum += round(a["call_score"] * UNIT)
        for speaker in summary["speakers"]:
            role = self.roles.setdefault(speaker["role"] or NO_ROLE, _new_role())
            role["utterances"] += speaker["utterances"]
            _add_counts(role["labels"], speaker["emotion_counts"])
        for name in {g["role"] or NO_ROLE for g in a["roles"]}:
            self.roles[name]["calls"] += 1
        for g in a["roles"]:
            role = self.roles[g["role"] or NO_ROLE]
            role["histogram"][score_bin(g["score"])] += 1
            role["score_sum"] += round(g["score"] * UNIT)
            for e in g["escalations"]:
                self.escalations[e["kind"]] = self.escalations.get(e["kind"], 0) + 1
        self.escalated += a["escalations"] > 0
        if a["flagged"]:
            self.flagged += 1
            self._keep([_review_item(summary)])
        return self

    def _keep(self, items: list[dict[str, Any]]) -> None:
        self.review.extend(items)
        if len(self.review) > 2 * self.review_calls:  # trimmed in chunks: amortised O(1) per call
            self.review = heapq.nsmallest(self.review_calls, self.review, key=_review_rank)

    def merge(self, other: ArchiveTotals) -> ArchiveTotals:
        self.calls += other.calls
        self.utterances += other.utterances
        self.score_sum += other.score_sum
        self.flagged += other.flagged
        self.escalated += other.escalated
        _add_counts(self.labels, other.labels)
        _add_counts(self.escalations, other.escalations)
        self.histogram = [x + y for x, y in zip(self.histogram, other.histogram, strict=True)]
        for name, theirs in other.roles.items():
            mine = self.roles.setdefault(name, _new_role())
            for key in ("calls", "utterances", "score_sum"):
                mine[key] += theirs[key]
            _add_counts(mine["labels"], theirs["labels"])
            mine["histogram"] = [x + y for x, y in zip(mine["histogram"], theirs["histogram"], strict=True)]
        self._keep(other.review)
        return self

    def to_dict(self) -> dict[str, Any]:
        self.review = heapq.nsmallest(self.review_calls, self.review, key=_review_rank)
        return {
            "review_calls": self.review_calls,
            "calls": self.calls,
            "utterances": self.utterances,
            "score_sum": self.score_sum,
            "flagged": self.flagged,
            "escalated": self.escalated,
            "labels": self.labels,
            "histogram": self.histogram,
            "escalations": self.escalations,
            "roles": self.roles,
            "review": self.review,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveTotals:
        totals = cls(data["review_calls"])
        for key in (
            "calls",
            "utterances",
            "score_sum",
            "flagged",
            "escalated",
            "labels",
            "histogram",
            "escalations",
            "roles",
            "review",
        ):
            setattr(totals, key, data[key])
        return totals

    def extract(self, thresholds: Thresholds) -> dict[str, Any]:
        """archive.json's content: every mapping sorted by key, the review list ranked."""
        review = sorted(self.review, key=_review_rank)[: self.review_calls]
        return {
            "schema_version": ARCHIVE_SCHEMA_VERSION,
            "thresholds": asdict(thresholds),
            "calls": self.calls,
            "utterances": self.utterances,
            "labels": dict(sorted(self.labels.items())),
            "roles": {
                name: {
                    "calls": r["calls"],
                    "utterances": r["utterances"],
                    "labels": dict(sorted(r["labels"].items())),
                    "mean_score": _mean(r["score_sum"], sum(r["histogram"])),
                    "score_histogram": r["histogram"],
                }
                for name, r in sorted(self.roles.items())
            },
            "call_scores": {
                "mean": _mean(self.score_sum, self.calls),
                "bin_edges": bin_edges(),
                "histogram": self.histogram,
            },
            "escalations": dict(sorted(self.escalations.items())),
            "calls_with_escalations": self.escalated,
            "flagged_calls": self.flagged,
            "review": [{"rank": i + 1, **item} for i, item in enumerate(review)],
        }


def _mean(total: int, n: int) -> float | None:
    return round(total / n / UNIT, 4) if n else None
