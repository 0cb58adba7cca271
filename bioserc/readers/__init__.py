"""Input readers: one module per format, registered by name for `--format` (or found by `--format auto`)."""

from bioserc.readers import (  # noqa: F401  (registers the readers)
    aws_tca,
    aws_transcribe,
    azure_stt,
    bioserc_json,
    calls_csv,
    contact_lens,
    corpus_csv,
    google_ccai,
    google_ccai_api,
    jsonl,
)
from bioserc.readers.base import BaseReader, get_reader_class, reader_names, register_reader
from bioserc.readers.sources import ReadReport, read_conversations, read_items, reader_for, resolve_inputs


__all__ = [
    "BaseReader",
    "ReadReport",
    "get_reader_class",
    "read_conversations",
    "read_items",
    "reader_for",
    "reader_names",
    "register_reader",
    "resolve_inputs",
]
