"""The rows of the labeling pipeline's outputs: an utterance row (utterances.jsonl and .parquet) per labelled
utterance, and a dead-letter row per utterance of a conversation the classifier failed.

A row joins back to the call it came from: source file and format, the vendor's own turn id (`source_id`), the text
exactly as the source had it, and the times. `PARQUET_SCHEMA` is utterances.parquet's.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from bioserc.errors import RAW_LIMIT
from bioserc.pipelines.classifier_handler import LabelOutcome


# utterances.parquet; probs is a map so rows of models with different label sets can share one file
PARQUET_SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("index", pa.int64()),
        ("speaker", pa.string()),
        ("role", pa.string()),
        ("text", pa.string()),
        ("original_text", pa.string()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("source_path", pa.string()),
        ("source_format", pa.string()),
        ("source_id", pa.string()),
        ("gold_label", pa.string()),
        ("label", pa.string()),
        ("probs", pa.map_(pa.string(), pa.float64())),
        ("bio", pa.string()),
        ("model_id", pa.string()),
    ]
)


def utterance_rows(outcome: LabelOutcome) -> list[dict[str, Any]]:
    """One row per utterance, with what joins it back to the call: source file and format, the vendor's own turn id
    (`source_id`), the text exactly as the source had it, and the times. `bio` is the speaker's bio text (null for a
    profile vector, which is no text to read)."""
    conv = outcome.request.conversation
    bios = {s: b for s, b in outcome.request.bios.items() if isinstance(b, str)}
    assert outcome.predictions is not None, f"conversation {conv.id} has no predictions"
    source = {"source_path": conv.metadata.get("source_path"), "source_format": conv.metadata.get("source_format")}
    return [
        {
            "conversation_id": conv.id,
            "index": u.index,
            "speaker": u.speaker,
            "role": u.role,
            "text": u.text,
            "original_text": u.original_text if u.original_text is not None else u.text,
            "start_ms": u.start_ms,
            "end_ms": u.end_ms,
            **source,
            "source_id": _source_id(u.metadata.get("source_id")),
            "gold_label": u.label,
            "label": p.label,
            "probs": {name: round(float(x), 6) for name, x in zip(outcome.labels, p.probs, strict=True)},
            "bio": bios.get(u.speaker),
            "model_id": outcome.model_id,
        }
        for u, p in zip(conv.utterances, outcome.predictions, strict=True)
    ]


def _source_id(value: Any) -> str | None:
    return None if value is None else str(value)


def parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in PARQUET_SCHEMA.names}


def failed_utterance_rows(outcome: LabelOutcome) -> list[dict[str, Any]]:
    """One dead-letter row per utterance of a conversation the classifier failed (`outcome.error`)."""
    conv = outcome.request.conversation
    return [
        {
            "stage": "classify",
            "path": conv.metadata.get("source_path"),
            "record": f"{conv.id} utterance {u.index}",
            "conversation_id": conv.id,
            "index": u.index,
            "field": None,
            "reason": outcome.error,
            "utterances": 1,
            "model_id": outcome.model_id,
            "raw": json.dumps(u.to_dict(), ensure_ascii=False)[:RAW_LIMIT],
        }
        for u in conv.utterances
    ]
