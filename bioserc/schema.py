"""The one schema every stage exchanges: a Conversation of Utterances, with a stable, versioned JSONL form.

Readers produce these, the bio stage and the classifiers consume them, and Beam moves them between workers, so they
are plain slotted dataclasses (picklable, no Beam import) with an explicit `to_dict`/`from_dict` for JSONL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


SCHEMA_VERSION = 1

ROLES = ("agent", "customer", "system", "bot", "supervisor", "other")


@dataclass(slots=True)
class Utterance:
    """One turn. `text` is normalised (what models see); `original_text` is exactly what the source said."""

    index: int
    speaker: str
    text: str
    original_text: str | None = None
    role: str | None = None  # one of ROLES for call-centre sources; None for research corpora
    start_ms: int | None = None
    end_ms: int | None = None
    label: str | None = None  # gold emotion label name, when the source has one
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "speaker": self.speaker, "text": self.text}
        for key in ("original_text", "role", "start_ms", "end_ms", "label"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Utterance:
        return cls(
            index=int(data["index"]),
            speaker=str(data["speaker"]),
            text=str(data["text"]),
            original_text=data.get("original_text"),
            role=data.get("role"),
            start_ms=data.get("start_ms"),
            end_ms=data.get("end_ms"),
            label=data.get("label"),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(slots=True)
class Conversation:
    """A whole conversation: bios need every turn of a speaker before any of their turns can be labelled."""

    id: str
    utterances: list[Utterance]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        """Distinct speakers in order of first appearance (the paper's SPEAKER_k order)."""
        return list(dict.fromkeys(u.speaker for u in self.utterances))

    @property
    def label_set(self) -> str | None:
        return self.metadata.get("label_set")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "metadata": self.metadata,
            "utterances": [u.to_dict() for u in self.utterances],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this bioserc understands ({SCHEMA_VERSION})")
        return cls(
            id=str(data["id"]),
            utterances=[Utterance.from_dict(u) for u in data["utterances"]],
            metadata=dict(data.get("metadata") or {}),
        )
