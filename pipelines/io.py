"""Beam transforms shared by the bio and labeling pipelines: read any archive, write JSONL outputs and dead letters.

Files are matched and opened through Beam's filesystems, so `gs://bucket/calls/*.json.gz` works on Dataflow exactly
like a local directory does here. Parsing is the core readers' job; bad records leave on a tagged dead-letter output.
"""

from __future__ import annotations

import json
import os
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from bioserc.errors import BadRecord
from bioserc.readers import resolve_inputs
from bioserc.readers.base import MAX_FILE_BYTES
from bioserc.readers.sources import read_path


DEAD_LETTER = "dead_letter"
NAMESPACE = "bioserc"


def expand_inputs(specs: list[str]) -> list[str]:
    """Local paths are expanded here (directories, globs); remote ones are left for MatchFiles on the workers."""
    local = [s for s in specs if "://" not in s]
    return (resolve_inputs(local) if local else []) + [s for s in specs if "://" in s]


def open_raw(path: str):
    """Open through Beam's filesystems without transparent decompression: `read_limited` inflates gzip itself, to the
    end of the stream (Beam's decompressing file returns only its first 16 MiB buffer from a bare `read()`)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _ParseFile(beam.DoFn):
    """One file path -> its conversations, and its bad records on the dead-letter output (one for a whole-file
    failure such as a symlink loop, corrupt gzip or a file over `max_bytes`)."""

    def __init__(self, fmt: str, options: dict[str, Any], max_bytes: int = MAX_FILE_BYTES, counted: bool = True):
        self.fmt, self.options, self.max_bytes = fmt, options, max_bytes
        space = NAMESPACE if counted else f"{NAMESPACE}_reread"  # a second read of the same files counts apart
        self.read = Metrics.counter(space, "conversations_read")
        self.bad = Metrics.counter(space, "input_records_dead_lettered")

    def process(self, path: str):
        for item in read_path(path, self.fmt, self.max_bytes, opener=open_raw, **self.options):
            if isinstance(item, BadRecord):
                self.bad.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"stage": "read", **item.to_dict()})
            else:
                self.read.inc()
                yield item


class ReadConversations(beam.PTransform):
    """Files/globs -> Conversation elements, plus a `dead_letter` output of unreadable records.

    Local inputs are expanded here (on the machine that builds the job), remote patterns are matched by the workers;
    a reshuffle then spreads the file paths over workers, and each worker opens and reads its files itself.
    """

    def __init__(self, inputs: list[str], fmt: str = "auto", reader_options: dict[str, Any] | None = None,
                 max_bytes: int = MAX_FILE_BYTES, counted: bool = True):
        super().__init__()
        self.inputs, self.fmt, self.reader_options, self.max_bytes = inputs, fmt, reader_options or {}, max_bytes
        self.counted = counted

    def expand(self, pbegin):
        specs = expand_inputs(self.inputs)
        paths = pbegin | "Files" >> beam.Create([s for s in specs if "://" not in s])
        remote = [s for s in specs if "://" in s]
        if remote:
            matched = (pbegin
                       | "Patterns" >> beam.Create(remote)
                       | "Match" >> fileio.MatchAll()
                       | "Paths" >> beam.Map(lambda metadata: metadata.path))
            paths = (paths, matched) | "AllFiles" >> beam.Flatten()
        return (
            paths
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ParseFile(self.fmt, self.reader_options, self.max_bytes, self.counted))
            .with_outputs(DEAD_LETTER, main="main")
        )


class WriteJsonl(beam.PTransform):
    """Dicts -> one JSONL file (no shard suffix), written through a temp file and renamed on success by Beam."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pcoll):
        return (
            pcoll
            | "ToJson" >> beam.Map(lambda row: json.dumps(row, ensure_ascii=False, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self.path, shard_name_template="", num_shards=1)
        )


def output_path(directory: str, name: str) -> str:
    """`directory/name`; remote URLs are joined as strings (what FileSystems.join does for gs://), so a pipeline can
    be built on a machine without that filesystem's client library (it is only needed where the job runs)."""
    return f"{directory.rstrip('/')}/{name}" if "://" in directory else os.path.join(directory, name)


def counters(result) -> dict[str, int]:
    """The pipeline's own counters (read, generated, dead-lettered, ...) after it finished."""
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (counter.committed or 0)
    return totals
