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
from apache_beam.metrics import Metrics

from bioserc.errors import BadRecord
from bioserc.readers import reader_for, resolve_inputs


DEAD_LETTER = "dead_letter"
NAMESPACE = "bioserc"


def expand_inputs(specs: list[str]) -> list[str]:
    """Local paths are expanded here (directories, globs); remote ones are left for MatchFiles on the workers."""
    local = [s for s in specs if "://" not in s]
    return (resolve_inputs(local) if local else []) + [s for s in specs if "://" in s]


class _ParseFile(beam.DoFn):
    def __init__(self, fmt: str, options: dict[str, Any]):
        self.fmt, self.options = fmt, options
        self.read = Metrics.counter(NAMESPACE, "conversations_read")
        self.bad = Metrics.counter(NAMESPACE, "input_records_dead_lettered")

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        try:
            data = readable.read()
            reader = reader_for(path, data, self.fmt, **self.options)
        except (OSError, ValueError) as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, BadRecord(path, "file", None, str(err)).to_dict())
            return
        for item in reader.read_bytes(path, data):
            if isinstance(item, BadRecord):
                self.bad.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"stage": "read", **item.to_dict()})
            else:
                self.read.inc()
                yield item


class ReadConversations(beam.PTransform):
    """Files/globs -> Conversation elements, plus a `dead_letter` output of unreadable records."""

    def __init__(self, inputs: list[str], fmt: str = "auto", reader_options: dict[str, Any] | None = None):
        super().__init__()
        self.inputs, self.fmt, self.reader_options = inputs, fmt, reader_options or {}

    def expand(self, pbegin):
        return (
            pbegin
            | "Patterns" >> beam.Create(expand_inputs(self.inputs))
            | "Match" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            | "Parse" >> beam.ParDo(_ParseFile(self.fmt, self.reader_options)).with_outputs(DEAD_LETTER, main="main")
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
