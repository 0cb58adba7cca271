"""Beam transforms shared by the bio and labeling pipelines: read any archive into batches, read text files.

Files are matched and opened through Beam's filesystems, so `gs://bucket/calls/*.json.gz` works on Dataflow exactly
like a local directory does here. Parsing is the core readers' job; bad records become dead-letter records. What the
steps hand on is described in `pipelines.records` (why one chain of batches, cut by the reader, and ledger counts).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from bioserc.errors import BadRecord
from bioserc.pipelines.records import DEAD, WorkBatch, ledger
from bioserc.readers import resolve_inputs
from bioserc.readers.base import MAX_FILE_BYTES
from bioserc.readers.sources import read_path


def expand_inputs(specs: list[str]) -> list[str]:
    """Local paths are expanded here (directories, globs); remote ones are left for MatchAll on the workers."""
    local = [s for s in specs if "://" not in s]
    return (resolve_inputs(local) if local else []) + [s for s in specs if "://" in s]


def open_raw(path: str):
    """Open through Beam's filesystems without transparent decompression: `read_limited` inflates gzip itself, to the
    end of the stream (Beam's decompressing file returns only its first 16 MiB buffer from a bare `read()`)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class FileGroups(beam.PTransform):
    """Inputs -> lists of file paths, the unit a worker reads (and the bound of the batches cut from it).

    Local inputs are expanded here, on the machine that builds the job, and grouped `size` files a group (call-centre
    exports hold one call a file, so a group fills a batch); remote patterns are matched by the workers, one file a
    group. A reshuffle then spreads the groups over workers.
    """

    def __init__(self, inputs: list[str], size: int):
        super().__init__()
        self.inputs, self.size = inputs, size

    def expand(self, pbegin):
        specs = expand_inputs(self.inputs)
        local = [s for s in specs if "://" not in s]
        groups = pbegin | "Local" >> beam.Create([local[i : i + self.size] for i in range(0, len(local), self.size)])
        remote = [s for s in specs if "://" in s]
        if remote:
            matched = (
                pbegin
                | "Patterns" >> beam.Create(remote)
                | "Match" >> fileio.MatchAll()
                | "OneFile" >> beam.Map(lambda metadata: [metadata.path])
            )
            groups = (groups, matched) | "AllGroups" >> beam.Flatten()
        return groups | "Spread" >> beam.Reshuffle()


class ParseFiles(beam.DoFn):
    """A group of files -> Batches of at most `batch` conversations (at least one, maybe empty), carrying a
    dead-letter record per bad record (one for a whole-file failure such as a symlink loop, corrupt gzip or a file over
    `max_bytes`) and the group's counts.

    With `count_utterances` the counts also hold the utterances the bad records held (where the reader knows them),
    for pipelines that account for every utterance.
    """

    def __init__(
        self,
        fmt: str,
        options: dict[str, Any],
        max_bytes: int = MAX_FILE_BYTES,
        batch: int = 16,
        count_utterances: bool = False,
    ):
        self.fmt, self.options, self.max_bytes, self.batch = fmt, options, max_bytes, batch
        self.count_utterances = count_utterances

    def process(self, group: list[str]) -> Iterator[WorkBatch]:
        key = group[0] if group else ""
        current = WorkBatch(f"{key}#0")
        read = bad = lost = 0
        for path in group:
            for item in read_path(path, self.fmt, self.max_bytes, opener=open_raw, **self.options):
                if isinstance(item, BadRecord):
                    bad += 1
                    lost += item.utterances
                    current.records.append((DEAD, {"stage": "read", **item.to_dict()}))
                    continue
                if len(current) == self.batch:
                    yield current
                    current = WorkBatch(f"{key}#{read // self.batch}")
                current.append(item)
                read += 1
        lost = lost if self.count_utterances else 0
        current.records.extend(
            ledger(
                "read",
                key,
                conversations_read=read,
                input_records_dead_lettered=bad,
                utterances_unreadable=lost,
                utterances_dead_lettered=lost,
            )
        )
        yield current


class TextLines(beam.PTransform):
    """A file or glob (local or remote) -> its lines, without line ends; blank lines are dropped.

    Instead of `ReadFromText`: Beam's Dask runner does not translate `Read` sources, and these files are small (a
    bios file, a previous run's summaries)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def expand(self, pbegin):
        if "://" in self.pattern:
            paths = (
                pbegin
                | "Pattern" >> beam.Create([self.pattern])
                | "Match" >> fileio.MatchAll()
                | "Path" >> beam.Map(lambda metadata: metadata.path)
            )
        else:
            paths = pbegin | "Paths" >> beam.Create(sorted(glob.glob(self.pattern)) or [self.pattern])
        return paths | "Lines" >> beam.FlatMap(_lines)


def _lines(path: str) -> Iterator[str]:
    with FileSystems.open(path) as fh:  # decompresses by extension (.gz)
        for raw in fh:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.strip():
                yield line


def output_path(directory: str, name: str) -> str:
    """`directory/name`; remote URLs are joined as strings (what FileSystems.join does for gs://), so a pipeline can
    be built on a machine without that filesystem's client library (it is only needed where the job runs)."""
    return f"{directory.rstrip('/')}/{name}" if "://" in directory else os.path.join(directory, name)


def counters(run) -> dict[str, int]:
    """The counters of a finished pipeline run (`bios_pipeline.run`, `label_pipeline.run`): summed by the driver from
    the ledger rows its steps wrote, so they are there on every runner."""
    return dict(run.counters)
