"""Where a labeling run writes: one output folder, one writer at a time, shards written as work goes, files replaced
only when the run succeeded.

Workers write their rows bundle by bundle with Beam's `fileio.WriteToFiles` into a staging folder inside the output
(memory stays flat whatever the archive size: no step holds all rows). After the pipeline, the driver concatenates
each kind of shard into its single file (`utterances.jsonl`, ...), counting what it copies, and renames the files over
the previous ones, `utterances.jsonl` last. A failed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from bioserc.pipelines.io import output_path


UTTERANCES, PARQUET, CONVERSATIONS, DEAD = "utterances.jsonl", "utterances.parquet", "conversations.jsonl", \
    "dead_letter.jsonl"
PROMOTE_ORDER = (PARQUET, CONVERSATIONS, DEAD, UTTERANCES)  # utterances.jsonl last: it is what --skip-existing reads
DESTINATIONS = {UTTERANCES: "utterances", PARQUET: "parquet", CONVERSATIONS: "conversations", DEAD: "dead_letter"}
LOCK = ".bioserc.lock"
LEFTOVERS = (".staging-", "beam-temp-", ".temp")  # folders a killed run leaves behind in its output
PARQUET_ROWS_PER_GROUP = 4096


class OutputError(RuntimeError):
    """The output folder cannot be used: not writable, or another run is writing to it."""


def is_remote(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def output_lock(directory: str) -> Iterator[None]:
    """Hold an exclusive lock on a local output folder for the whole run; fail at once if another run holds it.

    An flock dies with its process, so a run killed with SIGKILL never leaves a stale lock behind. The lock file says
    who holds it, for the error message. Remote outputs (gs://) cannot be locked: users must not share them.
    """
    if is_remote(directory):
        yield
        return
    created = not os.path.isdir(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fh = open(os.path.join(directory, LOCK), "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole run)
    except OSError as err:
        raise OutputError(f"output folder {directory!r} is not writable: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise OutputError(f"output folder {directory!r} is in use by another bioserc run ({holder}); wait for it "
                              "to finish or choose another -o") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        fh.flush()
        yield
    finally:
        fh.close()
        if created and os.listdir(directory) == [LOCK]:  # failed before writing anything: leave no trace
            os.remove(os.path.join(directory, LOCK))
            os.rmdir(directory)


def remove_leftovers(directory: str) -> list[str]:
    """Staging and temp folders of earlier runs that died (safe only while holding the lock): their names."""
    if is_remote(directory) or not os.path.isdir(directory):
        return []
    gone = [name for name in os.listdir(directory) if name.startswith(LEFTOVERS)]
    for name in gone:
        path = os.path.join(directory, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    return gone


# -- writing shards on the workers ----------------------------------------------------------------------------------


class JsonSink(fileio.FileSink):
    """(destination, dict) -> one JSON line."""

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record) -> None:
        self._fh.write(json.dumps(record[1], ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")

    def flush(self) -> None:
        self._fh.flush()


class ParquetSink(fileio.FileSink):
    """(destination, row) -> Parquet row groups of `PARQUET_ROWS_PER_GROUP` rows (only a group is held in memory)."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema

    def open(self, fh) -> None:
        self._writer = pq.ParquetWriter(fh, self.schema, compression="snappy")
        self._rows: list[dict] = []

    def write(self, record) -> None:
        self._rows.append(record[1])
        if len(self._rows) >= PARQUET_ROWS_PER_GROUP:
            self._write_group()

    def _write_group(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def flush(self) -> None:  # fileio calls it once, right before closing the file
        self._write_group()
        self._writer.close()


class WriteShards(beam.PTransform):
    """(file name, record) pairs -> shard files `<kind>-*` in `staging`, written bundle by bundle."""

    def __init__(self, staging: str, parquet_schema: pa.Schema):
        super().__init__()
        self.staging, self.parquet_schema = staging, parquet_schema

    def expand(self, records):
        schema = self.parquet_schema
        return records | "WriteFiles" >> fileio.WriteToFiles(
            self.staging, destination=lambda record: DESTINATIONS[record[0]],
            sink=lambda dest: ParquetSink(schema) if dest == "parquet" else JsonSink(),
            file_naming=fileio.destination_prefix_naming(),
            temp_directory=StaticValueProvider(str, output_path(self.staging, ".temp")))


# -- finishing on the driver ----------------------------------------------------------------------------------------


@dataclass
class Written:
    """What the driver copied into the final files: the counts the run is reconciled against."""

    utterance_rows: int = 0
    conversation_rows: int = 0
    dead_letter_rows: int = 0
    dead_letter_utterances: int = 0
    files: list[str] = field(default_factory=list)


def shards(staging: str, name: str) -> list[str]:
    pattern = output_path(staging, f"{DESTINATIONS[name]}-*")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _concat_jsonl(old: list[str], new: list[str], target: str, count: Callable[[bytes], None]) -> None:
    """Lines of `old` then of `new` into `target`; `count` sees every line taken from `new`."""
    with FileSystems.create(target) as out:
        for src in old + new:
            with FileSystems.open(src) as fh:
                for line in fh:
                    if line.strip():
                        if src in new:
                            count(line)
                        out.write(line if line.endswith(b"\n") else line + b"\n")


def _concat_parquet(sources: list[str], target: str, schema: pa.Schema) -> None:
    with FileSystems.create(target) as out, pq.ParquetWriter(out, schema, compression="snappy") as writer:
        for src in sources:
            with FileSystems.open(src) as fh:
                reader = pq.ParquetFile(fh)
                for i in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(i).cast(schema))


def assemble(staging: str, output: str, schema: pa.Schema, merge: bool) -> Written:
    """Concatenate the shards of each kind into one file in `staging`; with `merge`, the previous output file first.

    Counts the utterance rows, summaries and dead-letter rows (and the utterances those hold) it copies from shards.
    """
    written = Written()

    def previous(name: str) -> list[str]:
        path = output_path(output, name)
        return [path] if merge and FileSystems.exists(path) else []

    def count_dead(line: bytes) -> None:
        written.dead_letter_rows += 1
        written.dead_letter_utterances += int(json.loads(line).get("utterances") or 0)

    def count(attr: str) -> Callable[[bytes], None]:
        return lambda _line: setattr(written, attr, getattr(written, attr) + 1)

    _concat_jsonl(previous(UTTERANCES), shards(staging, UTTERANCES), output_path(staging, UTTERANCES),
                  count("utterance_rows"))
    _concat_jsonl(previous(CONVERSATIONS), shards(staging, CONVERSATIONS), output_path(staging, CONVERSATIONS),
                  count("conversation_rows"))
    _concat_jsonl([], shards(staging, DEAD), output_path(staging, DEAD), count_dead)
    _concat_parquet(previous(PARQUET) + shards(staging, PARQUET), output_path(staging, PARQUET), schema)
    written.files = [output_path(output, name) for name in (UTTERANCES, PARQUET, CONVERSATIONS, DEAD)]
    return written


def promote(staging: str, output: str) -> None:
    """Move the assembled files over the previous ones (each rename replaces one file), utterances.jsonl last."""
    for name in PROMOTE_ORDER:
        source, target = output_path(staging, name), output_path(output, name)
        if not is_remote(output):
            os.replace(source, target)
            continue
        if FileSystems.exists(target):
            FileSystems.delete([target])  # a gs:// rename does not replace an existing object
        FileSystems.rename([source], [target])
    discard(staging)


def discard(staging: str) -> None:
    if FileSystems.exists(staging):
        FileSystems.delete([staging])


def keep_failed(staging: str, output: str) -> str:
    """A failed run's staging folder, renamed so the next run does not clean it up: the user can read its dead
    letters. Returns the new path."""
    target = output_path(output, f"failed-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    FileSystems.rename([staging], [target])
    return target
