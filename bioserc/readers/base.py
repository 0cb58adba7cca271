"""The reader contract: one small class per input format behind `BaseReader`, registered by name.

A reader turns the bytes of one file into `Conversation`s and `BadRecord`s. It never raises for bad data and never
drops it silently: every unusable record comes out as a `BadRecord` naming file, record and field. The base class
handles gzip (streamed, with a size cap), UTF-8 decoding, building utterances and the checks every conversation must
pass whatever its format (`check_conversation`); a format implements `detect` and `parse`.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, ClassVar

from bioserc.errors import RAW_LIMIT, BadRecord, RecordError
from bioserc.normalize import find_control_character, normalize_text
from bioserc.readers.roles import checked_roles
from bioserc.schema import Conversation, Utterance


MAX_UTTERANCES = 5000  # longer "conversations" are almost always a grouping error upstream (a whole archive as one id)
MAX_FILE_BYTES = 256 * 1024 * 1024  # per input file, decompressed: parsing a file costs several times its size in RAM
CHUNK_BYTES = 1024 * 1024  # read and inflate in pieces this size: a gzip bomb stops within one piece of the cap
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's "gzip header and trailer" mode: checks each member's CRC and length
NESTING_REASON = "JSON arrays/objects nested deeper than Python's recursion limit"

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


def inflate(path: str, chunks: Iterable[bytes], piece_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Decompress gzip data (one or more members) piece by piece, never more than `piece_bytes` at a time.

    Raises RecordError for corrupt data, a stream that ends inside a member, or trailing bytes that are not gzip.
    """
    chunks = iter(chunks)
    member = zlib.decompressobj(GZIP_WBITS)
    data = next(chunks, b"")
    try:
        while True:
            if member.eof:
                data = data.lstrip(b"\0")  # zero padding after a member is allowed, as gzip(1) and Python's gzip do
                if len(data) < len(GZIP_MAGIC):
                    more = next(chunks, None)
                    if more is None:
                        if data:
                            raise _corrupt(path, "trailing bytes after the gzip data are not gzip")
                        return
                    data += more
                    continue
                if not data.startswith(GZIP_MAGIC):
                    raise _corrupt(path, "trailing bytes after the gzip data are not gzip")
                member = zlib.decompressobj(GZIP_WBITS)
            piece = member.decompress(data, piece_bytes)
            if piece:
                yield piece
            data = member.unused_data if member.eof else member.unconsumed_tail
            if not data and not member.eof and len(piece) < piece_bytes:  # a full piece may leave output pending
                more = next(chunks, None)
                if more is None:
                    raise _corrupt(path, "truncated gzip data (the file ends inside the compressed stream)")
                data = more
    except zlib.error as err:
        raise _corrupt(path, str(err)) from None


def _corrupt(path: str, detail: str) -> RecordError:
    return RecordError(path, "file", None, f"corrupt gzip data: {detail}")


def read_limited(fh: BinaryIO, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a binary stream to its end in chunks, gunzipping as it goes; RecordError past `max_bytes` or on bad gzip.

    Callers open files raw (no transparent decompression): a decompressing file object's `read()` may return only
    its first buffer, which silently lost the end of large `.gz` inputs.
    """
    chunks = iter(lambda: fh.read(CHUNK_BYTES), b"")
    first = b""
    for chunk in chunks:  # the magic needs two bytes; a stream may hand out fewer at a time
        first += chunk
        if len(first) >= len(GZIP_MAGIC):
            break
    gzipped = first.startswith(GZIP_MAGIC)
    pieces = itertools.chain([first], chunks)
    out = io.BytesIO()  # getvalue() hands over its buffer: the content is held once, not twice as with a join
    for piece in inflate(path, pieces) if gzipped else pieces:
        if out.tell() + len(piece) > max_bytes:
            what = "decompressed size" if gzipped else "size"
            raise RecordError(
                path, "file", None, f"{what} exceeds the limit of {max_bytes / 2**20:g} MiB (--max-file-mb)"
            )
        out.write(piece)
    return out.getvalue()


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
        raise RecordError(
            path, record, None, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}", raw=text[:2000]
        ) from None
    except RecursionError:
        raise RecordError(path, record, None, f"nesting too deep: {NESTING_REASON}") from None


def speech_segments(
    path: str, conv_id: str, field: str, segments: list[Any], text_key: str, skipped: Counter
) -> Iterator[tuple[int, str, dict[str, Any], Any]]:
    """(position, record name, segment, text) of each vendor segment that holds speech.

    A segment whose text is empty is silence or noise the vendor kept, not a lost turn: it is counted in
    `skipped["empty"]` (for the conversation's `skipped_segments`) instead of being dead-lettered.
    """
    for i, seg in enumerate(segments):
        record = f"{conv_id} {field}[{i}]"
        if not isinstance(seg, dict):
            raise RecordError(path, record, None, "segment is not a JSON object", raw=json.dumps(seg)[:RAW_LIMIT])
        text = seg.get(text_key)
        if isinstance(text, str) and not text.strip():
            skipped["empty"] += 1
            continue
        yield i, record, seg, text


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
        speaker_roles: diarized speaker id -> role (Azure `1`, AWS Transcribe `spk_0`), for formats without roles.
        channel_roles: audio channel id -> role (Azure `0`, AWS Transcribe `ch_0`, CCAI channelTag `1`). Kept apart
            from speakers because the same number names a different person in each.
        normalize: apply `normalize_text` (the raw text is always kept as `original_text`).
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 50  # lower runs first in auto-detection: put specific formats before generic ones
    description: ClassVar[str] = ""

    def __init__(
        self,
        dataset: str | None = None,
        speaker_roles: dict[str, str] | None = None,
        channel_roles: dict[str, str] | None = None,
        normalize: bool = True,
    ):
        self.dataset = dataset
        self.speaker_roles = checked_roles(speaker_roles, "speaker_roles")
        self.channel_roles = checked_roles(channel_roles, "channel_roles")
        self.normalize = normalize

    @classmethod
    @abstractmethod
    def detect(cls, path: str, head: str) -> bool:
        """Cheap check on the file name and its first ~64 KiB of text."""

    @abstractmethod
    def parse(self, path: str, data: bytes) -> Iterator[ReadItem]:
        """Yield conversations and bad records from one file's (already gunzipped) bytes."""

    def read_bytes(self, path: str, data: bytes, max_bytes: int = MAX_FILE_BYTES) -> Iterator[ReadItem]:
        """Entry point for callers that hold a file's raw bytes (gzipped or not): tests, library users."""
        try:
            data = read_limited(io.BytesIO(data), path, max_bytes)
        except RecordError as err:
            yield BadRecord.from_error(err)
            return
        yield from self.read_data(path, data)

    def read_data(self, path: str, data: bytes) -> Iterator[ReadItem]:
        """Parse one file's content (already gunzipped) and pass every conversation through `check_conversation`."""
        try:
            for item in self.parse(path, data):
                if isinstance(item, BadRecord):
                    yield item
                else:
                    yield from check_conversation(path, item)
        except RecordError as err:  # a whole-file failure: malformed JSON, bad encoding, wrong top-level shape
            yield BadRecord.from_error(err)
        except RecursionError:
            yield BadRecord(path, "file", None, f"nesting too deep: {NESTING_REASON}")

    def read_file(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> Iterator[ReadItem]:
        try:
            with open(path, "rb") as fh:
                data = read_limited(fh, path, max_bytes)
        except RecordError as err:
            yield BadRecord.from_error(err)
            return
        yield from self.read_data(path, data)

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
        meta = {"source_format": self.name, "source_path": path}
        meta.update({k: v for k, v in metadata.items() if v is not None})
        return Conversation(id=record, utterances=utterances, metadata=meta)


def check_conversation(path: str, conv: Conversation) -> Iterator[ReadItem]:
    """The checks every conversation passes, whatever reader made it, so no format can bypass them.

    A conversation over MAX_UTTERANCES, with a repeated utterance index, or with control characters in a text or
    speaker is rejected whole (bios need every turn). An utterance whose text is empty or only whitespace has nothing
    to classify: it is dead-lettered on its own and the rest is kept with their original indices.
    """
    n = len(conv.utterances)
    if n > MAX_UTTERANCES:
        yield BadRecord(
            path,
            conv.id,
            "utterances",
            f"{n} utterances exceeds the limit of {MAX_UTTERANCES}; "
            "check that conversation ids are not shared by different calls",
            utterances=n,
        )
        return
    repeated = [i for i, count in Counter(u.index for u in conv.utterances).items() if count > 1]
    if repeated:
        yield BadRecord(path, conv.id, "index", f"utterance index {repeated[0]} appears more than once", utterances=n)
        return
    for utt in conv.utterances:
        for name in ("speaker", "text"):
            at = find_control_character(getattr(utt, name))
            if at is not None:
                char = getattr(utt, name)[at]
                yield BadRecord(
                    path,
                    conv.id,
                    name,
                    f"utterance {utt.index} {name} contains control character U+{ord(char):04X} at position {at}",
                    utterances=n,
                )
                return
    kept = [u for u in conv.utterances if u.text.strip()]
    for utt in conv.utterances:
        if not utt.text.strip():
            raw = utt.original_text[:RAW_LIMIT] if utt.original_text else None
            yield BadRecord(
                path,
                f"{conv.id} utterance {utt.index}",
                "text",
                "empty or whitespace-only text",
                raw=raw,
                utterances=1,
            )
    if len(kept) == n:
        yield conv
    elif kept:
        yield Conversation(id=conv.id, utterances=kept, metadata=conv.metadata)
