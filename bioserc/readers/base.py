"""The reader contract: one small class per input format behind `BaseReader`, registered by name.

A reader turns the bytes of one file into `Conversation`s and `BadRecord`s. It never raises for bad data and never
drops it silently: every unusable record comes out as a `BadRecord` naming file, record and field. The base class
handles gzip, UTF-8 decoding and building utterances; a format implements `detect` and `parse`.
"""

from __future__ import annotations

import gzip
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from bioserc.errors import BadRecord, RecordError
from bioserc.normalize import normalize_text
from bioserc.schema import ROLES, Conversation, Utterance


MAX_UTTERANCES = 5000  # longer "conversations" are almost always a grouping error upstream (a whole archive as one id)

ReadItem = Conversation | BadRecord

_REGISTRY: dict[str, type[BaseReader]] = {}


def register_reader(cls: type[BaseReader]) -> type[BaseReader]:
    """Class decorator: make a reader available as `--format NAME`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"duplicate reader name {cls.name!r} ({_REGISTRY[cls.name].__name__} and {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def reader_names() -> list[str]:
    return sorted(_REGISTRY)


def get_reader_class(name: str) -> type[BaseReader]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown input format {name!r}; choose 'auto' or one of {reader_names()}") from None


def detect_reader_class(path: str, head: str) -> type[BaseReader] | None:
    """The first registered reader (by `priority`) whose `detect` accepts this file's name and first bytes."""
    for cls in sorted(_REGISTRY.values(), key=lambda c: c.priority):
        if cls.detect(path, head):
            return cls
    return None


def maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def strip_gz(path: str) -> str:
    return path[:-3] if path.endswith(".gz") else path


def decode_utf8(path: str, data: bytes, record: str = "file") -> str:
    """Strict UTF-8 (a BOM is allowed): silently replacing bytes would corrupt what the models read."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RecordError(path, record, None, f"not valid UTF-8 at byte {err.start} (line {line})") from None


def load_json(path: str, text: str, record: str = "file") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(path, record, None, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}",
                          raw=text[:2000]) from None


def conversation_id_from_path(path: str) -> str:
    """Call-centre exports hold one conversation per file, named after the job or contact id."""
    name = os.path.basename(strip_gz(path))
    for ext in (".json", ".jsonl"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


class BaseReader(ABC):
    """Parse one input format. Subclasses set `name` and implement `detect` and `parse`.

    Args:
        dataset: label-set name for research corpora whose files do not say it (meld, emorynlp, iemocap).
        role_map: source speaker/channel id -> role, for formats that carry no role (Azure). Keys are strings.
        normalize: apply `normalize_text` (the raw text is always kept as `original_text`).
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 50  # lower runs first in auto-detection: put specific formats before generic ones
    description: ClassVar[str] = ""

    def __init__(self, dataset: str | None = None, role_map: dict[str, str] | None = None, normalize: bool = True):
        self.dataset = dataset
        self.role_map = {str(k): v for k, v in (role_map or {}).items()}
        self.normalize = normalize
        for role in self.role_map.values():
            if role not in ROLES:
                raise ValueError(f"role_map value {role!r} is not a role; choose one of {list(ROLES)}")

    @classmethod
    @abstractmethod
    def detect(cls, path: str, head: str) -> bool:
        """Cheap check on the file name and its first ~64 KiB of text."""

    @abstractmethod
    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        """Yield conversations and bad records from one file's (already gunzipped) bytes."""

    def read_bytes(self, path: str, data: bytes) -> Iterator[ReadItem]:
        """Entry point for callers that fetched the bytes themselves (Beam's filesystems, tests)."""
        try:
            data = maybe_gunzip(data)
        except (OSError, EOFError) as err:
            yield BadRecord(path, "file", None, f"corrupt gzip data: {err}")
            return
        try:
            yield from self.parse(path, data)
        except RecordError as err:  # a whole-file failure: malformed JSON, bad encoding, wrong top-level shape
            yield BadRecord.from_error(err)

    def read_file(self, path: str) -> Iterator[ReadItem]:
        with open(path, "rb") as fh:
            data = fh.read()
        yield from self.read_bytes(path, data)

    # -- helpers for subclasses -------------------------------------------------------------------------------

    def make_utterance(self, path: str, record: str, index: int, speaker: Any, text: Any, **fields: Any) -> Utterance:
        """Validate and normalise one turn; raise RecordError naming the field that is wrong."""
        if text is None:
            raise RecordError(path, record, "text", f"utterance {index} has no text")
        if not isinstance(text, str):
            raise RecordError(path, record, "text", f"utterance {index} text is {type(text).__name__}, not a string")
        if speaker is None or str(speaker).strip() == "":
            raise RecordError(path, record, "speaker", f"utterance {index} has no speaker")
        clean = normalize_text(text) if self.normalize else text
        return Utterance(index=index, speaker=str(speaker).strip(), text=clean, original_text=text, **fields)

    def make_conversation(self, path: str, conv_id: Any, utterances: list[Utterance], **metadata: Any) -> Conversation:
        record = str(conv_id)
        if conv_id is None or record.strip() == "":
            raise RecordError(path, "?", "conversation_id", "missing conversation id")
        if not utterances:
            raise RecordError(path, record, "utterances", "empty conversation (no utterances)")
        if len(utterances) > MAX_UTTERANCES:
            raise RecordError(path, record, "utterances",
                              f"{len(utterances)} utterances exceeds the limit of {MAX_UTTERANCES}; "
                              "check that conversation ids are not shared by different calls")
        meta = {"source_format": self.name, "source_path": path}
        meta.update({k: v for k, v in metadata.items() if v is not None})
        return Conversation(id=record, utterances=utterances, metadata=meta)
