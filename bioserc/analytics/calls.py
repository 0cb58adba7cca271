"""One call's labelled utterance rows -> its summary (conversations.jsonl) and its row of the flat calls table.

The summary keeps what `bioserc label` always wrote (emotion counts, each speaker's trajectory and dominant emotion)
and adds each turn's valence score and `analytics`: per role, the mean score, the start and the end (the means of its
first and last thirds of turns), an end-weighted score (weights growing linearly from 1 on its first turn to
`end_weight` on its last), the lowest point, the dominant emotion and the escalations (see `thresholds`), each with
the turn indices and times to jump to; per call, the call score (the customer's end-weighted score, or that of every
turn when no turn is the customer's), whether the call is flagged for review and why.

Turns are grouped by `role` (agent, customer, ...) where the reader knows it, else by speaker name, so a research
corpus gets one group per speaker and a transfer to a second agent stays one "agent" group.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bioserc.analytics.thresholds import Thresholds
from bioserc.analytics.valence import valence_score


NEUTRAL = {"neutral"}  # compared case-insensitively (EmoryNLP says "Neutral")
CALLS_SCHEMA_VERSION = 1
ROLE_COLUMNS = ("customer", "agent")  # the roles with columns of their own in the calls table
_ROLE_FIELDS = (
    ("utterances", "int"),
    ("mean", "float"),
    ("start", "float"),
    ("end", "float"),
    ("score", "float"),
    ("lowest", "float"),
    ("dominant", "string"),
    ("escalations", "int"),
)
CALLS_COLUMNS: tuple[tuple[str, str], ...] = (  # calls.csv / calls.parquet, in column order (README: the schema)
    ("schema_version", "int"),
    ("conversation_id", "string"),
    ("source_path", "string"),
    ("source_format", "string"),
    ("model_id", "string"),
    ("utterances", "int"),
    ("duration_ms", "int"),
    ("dominant_emotion", "string"),
    ("call_score", "float"),
    ("scored_group", "string"),
    ("flagged", "int"),
    ("escalations", "int"),
    ("negative_runs", "int"),
    ("shifts", "int"),
    ("first_escalation_index", "int"),
    ("first_escalation_ms", "int"),
    ("lowest_score", "float"),
    ("lowest_group", "string"),
    ("lowest_index", "int"),
    ("lowest_ms", "int"),
    *((f"{role}_{name}", kind) for role in ROLE_COLUMNS for name, kind in _ROLE_FIELDS),
    ("reasons", "string"),
)


@dataclass(frozen=True, slots=True)
class Turn:
    index: int
    score: float
    label: str
    start_ms: int | None
    end_ms: int | None


def _dominant(labels: list[str]) -> str | None:
    """The most frequent label; ties go to the one that occurred first."""
    if not labels:
        return None
    counts = Counter(labels)
    return max(dict.fromkeys(labels), key=lambda name: counts[name])


def _mean(scores: Sequence[float]) -> float:
    return round(sum(scores) / len(scores), 4)


def end_weighted(scores: Sequence[float], weight: float) -> float:
    """Mean of `scores` with weights growing linearly from 1 (first) to `weight` (last)."""
    if len(scores) == 1:
        return round(scores[0], 4)
    weights = [1 + (weight - 1) * i / (len(scores) - 1) for i in range(len(scores))]
    return round(sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights), 4)


def _clock(ms: int | None) -> str:
    if ms is None:
        return ""
    seconds = int(ms) // 1000
    return f", at {seconds // 60}:{seconds % 60:02d}"


def escalations(group: str, turns: Sequence[Turn], thresholds: Thresholds) -> list[dict[str, Any]]:
    """A group's negative runs and positive-to-negative shifts, in turn order."""
    events, run = [], []
    limit = -thresholds.negative

    def close_run() -> None:
        if len(run) >= thresholds.min_negative_run:
            events.append(
                {
                    "kind": "negative_run",
                    "group": group,
                    "first": run[0].index,
                    "last": run[-1].index,
                    "indices": [t.index for t in run],
                    "start_ms": run[0].start_ms,
                    "end_ms": run[-1].end_ms if run[-1].end_ms is not None else run[-1].start_ms,
                    "score": min(t.score for t in run),
                }
            )

    for prev, turn in zip([None, *turns[:-1]], turns, strict=True):
        if turn.score > limit:
            close_run()
            run = []
            continue
        run.append(turn)
        if prev is not None and prev.score > limit and prev.score - turn.score >= thresholds.shift_delta:
            events.append(
                {
                    "kind": "shift",
                    "group": group,
                    "first": prev.index,
                    "last": turn.index,
                    "indices": [prev.index, turn.index],
                    "start_ms": prev.start_ms,
                    "end_ms": turn.end_ms if turn.end_ms is not None else turn.start_ms,
                    "from": prev.score,
                    "score": turn.score,
                }
            )
    close_run()
    return sorted(events, key=lambda e: (e["first"], e["last"], e["kind"]))


def role_analytics(
    group: str, role: str | None, speakers: list[str], turns: Sequence[Turn], thresholds: Thresholds
) -> dict[str, Any]:
    """One group's trend, end-weighted score, lowest point, dominant emotion and escalations."""
    scores = [t.score for t in turns]
    third = math.ceil(len(turns) / 3)
    low = min(turns, key=lambda t: t.score)  # the first of equal lows
    return {
        "group": group,
        "role": role,
        "speakers": speakers,
        "utterances": len(turns),
        "mean": _mean(scores),
        "start": _mean(scores[:third]),
        "end": _mean(scores[-third:]),
        "score": end_weighted(scores, thresholds.end_weight),
        "lowest": {"index": low.index, "score": low.score, "start_ms": low.start_ms},
        "dominant_emotion": _dominant([t.label for t in turns]),
        "escalations": escalations(group, turns, thresholds),
    }


def _reason(event: dict[str, Any]) -> str:
    if event["kind"] == "negative_run":
        return (
            f"{event['group']}: {len(event['indices'])} negative turns in a row (turns {event['first']}-"
            f"{event['last']}{_clock(event['start_ms'])})"
        )
    return (
        f"{event['group']}: fell from {event['from']:+.2f} to {event['score']:+.2f} (turns {event['first']}-"
        f"{event['last']}{_clock(event['start_ms'])})"
    )


def call_analytics(rows: Sequence[dict[str, Any]], scores: Sequence[float], thresholds: Thresholds) -> dict[str, Any]:
    """Per role and per call analytics of one call's rows (in index order) and their valence scores."""
    groups: dict[str, list[Turn]] = {}
    members: dict[str, tuple[str | None, list[str]]] = {}
    for r, s in zip(rows, scores, strict=True):
        key = r.get("role") or r["speaker"]
        groups.setdefault(key, []).append(Turn(r["index"], s, r["label"], r.get("start_ms"), r.get("end_ms")))
        role, speakers = members.setdefault(key, (r.get("role"), []))
        if r["speaker"] not in speakers:
            speakers.append(r["speaker"])
    roles = [role_analytics(key, *members[key], turns, thresholds) for key, turns in groups.items()]
    customer = next((g for g in roles if g["role"] == "customer"), None)
    call_score = customer["score"] if customer else end_weighted(scores, thresholds.end_weight)
    events = sorted((e for g in roles for e in g["escalations"]), key=lambda e: (e["first"], e["last"], e["group"]))
    low = min(range(len(rows)), key=lambda i: scores[i])
    reasons = (
        [f"call score {call_score:+.2f} ({'customer' if customer else 'all turns'})"]
        if (call_score <= -thresholds.negative)
        else []
    )
    reasons += [_reason(e) for e in events]
    starts = [r["start_ms"] for r in rows if r.get("start_ms") is not None]
    ends = [
        r["end_ms"] if r.get("end_ms") is not None else r["start_ms"]
        for r in rows
        if r.get("end_ms") is not None or r.get("start_ms") is not None
    ]
    return {
        "call_score": call_score,
        "scored_group": "customer" if customer else "all",
        "roles": roles,
        "escalations": len(events),
        "flagged": bool(reasons),
        "reasons": reasons,
        "lowest": {
            "group": rows[low].get("role") or rows[low]["speaker"],
            "index": rows[low]["index"],
            "score": scores[low],
            "start_ms": rows[low].get("start_ms"),
        },
        "duration_ms": max(ends) - min(starts) if starts else None,
    }


def summarise(rows: Iterable[dict[str, Any]], thresholds: Thresholds | None = None) -> dict[str, Any]:
    """One conversation's utterance rows -> emotion counts, each speaker's trajectories (label and valence per turn)
    and dominant emotion, and `analytics` (see the module docstring).

    `speakers` is a list in order of first appearance (JSONL keys are written sorted; a list keeps the order).
    """
    thresholds = thresholds or Thresholds()
    rows = sorted(rows, key=lambda r: r["index"])
    scores = [valence_score(r["probs"]) for r in rows]
    speakers: dict[str, dict[str, Any]] = {}  # in order of first appearance
    for r, score in zip(rows, scores, strict=True):
        s = speakers.setdefault(
            r["speaker"],
            {"speaker": r["speaker"], "role": r.get("role"), "bio": r.get("bio"), "trajectory": [], "valence": []},
        )
        s["trajectory"].append([r["index"], r["label"]])
        s["valence"].append([r["index"], score])
    for s in speakers.values():
        labels = [label for _, label in s["trajectory"]]
        s["utterances"], s["emotion_counts"] = len(labels), dict(Counter(labels).most_common())
        s["dominant_emotion"] = _dominant(labels)
        s["dominant_non_neutral"] = _dominant([x for x in labels if x.lower() not in NEUTRAL])
    labels = [r["label"] for r in rows]
    first = rows[0]
    return {
        "conversation_id": first["conversation_id"],
        "model_id": first.get("model_id"),
        "source_path": first.get("source_path"),
        "source_format": first.get("source_format"),
        "utterances": len(rows),
        "emotion_counts": dict(Counter(labels).most_common()),
        "dominant_emotion": _dominant(labels),
        "speakers": list(speakers.values()),
        "analytics": call_analytics(rows, scores, thresholds),
    }


def calls_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary -> its calls-table row (`CALLS_COLUMNS`, in order): call-level figures, then the customer's and the
    agent's (null where the call has no such role)."""
    a = summary["analytics"]
    events = sorted((e for g in a["roles"] for e in g["escalations"]), key=lambda e: (e["first"], e["last"]))
    kinds = Counter(e["kind"] for e in events)
    values: dict[str, Any] = {
        "schema_version": CALLS_SCHEMA_VERSION,
        **{
            k: summary.get(k)
            for k in ("conversation_id", "source_path", "source_format", "model_id", "utterances", "dominant_emotion")
        },
        "duration_ms": a["duration_ms"],
        "call_score": a["call_score"],
        "scored_group": a["scored_group"],
        "flagged": int(a["flagged"]),
        "escalations": len(events),
        "negative_runs": kinds["negative_run"],
        "shifts": kinds["shift"],
        "first_escalation_index": events[0]["first"] if events else None,
        "first_escalation_ms": events[0]["start_ms"] if events else None,
        "lowest_score": a["lowest"]["score"],
        "lowest_group": a["lowest"]["group"],
        "lowest_index": a["lowest"]["index"],
        "lowest_ms": a["lowest"]["start_ms"],
        "reasons": "; ".join(a["reasons"]),
    }
    for g in a["roles"]:
        if g["role"] in ROLE_COLUMNS:
            values |= {f"{g['role']}_{name}": g[name] for name in ("utterances", "mean", "start", "end", "score")}
            values |= {
                f"{g['role']}_lowest": g["lowest"]["score"],
                f"{g['role']}_dominant": g["dominant_emotion"],
                f"{g['role']}_escalations": len(g["escalations"]),
            }
    return {name: values.get(name) for name, _ in CALLS_COLUMNS}
