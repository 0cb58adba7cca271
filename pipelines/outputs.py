"""Where a pipeline run writes: one output folder, one writer at a time, shards written as work goes, files replaced
only when the run succeeded.

Workers write their records bundle by bundle into a staging folder inside the output (memory stays flat whatever the
archive size: no step holds all rows), one shard per kind of record and bundle. After the pipeline, the driver
concatenates each kind of shard into its single file (`utterances.jsonl`, ...), counting what it copies, sums the
ledger shards, and renames the files over the previous ones, `utterances.jsonl` last. A failed run leaves the previous
outputs as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from bioserc.pipelines.io import output_path
from bioserc.pipelines.records import DEAD, LEDGER, sum_ledger


UTTERANCES, PARQUET, CONVERSATIONS = "utterances.jsonl", "utterances.parquet", "conversations.jsonl"
CALLS_CSV, CALLS_PARQUET, ARCHIVE, REPORT = "calls.csv", "calls.parquet", "archive.json", "report.html"
BIOS, PAPER = "bios.jsonl", "bios.paper.json"
DECISIONS, BIO_PAIRS = "decisions", "bio_pairs"  # lookups a first pipeline writes for the second (never outputs)
CALLS, ARCHIVE_PARTS = "calls", "archive_parts"  # calls-table rows and archive partials, assembled by the driver
ANALYTICS = (CALLS_PARQUET, CALLS_CSV, ARCHIVE)  # the driver writes them from CALLS and ARCHIVE_PARTS records
# utterances.jsonl last: it is what --skip-existing reads
PROMOTE_ORDER = (PARQUET, *ANALYTICS, CONVERSATIONS, DEAD, UTTERANCES)
DESTINATIONS = {
    UTTERANCES: "utterances",
    PARQUET: "parquet",
    CONVERSATIONS: "conversations",
    DEAD: "dead_letter",
    LEDGER: "ledger",
    BIOS: "bios",
    PAPER: "paper",
    DECISIONS: "decisions",
    BIO_PAIRS: "bio_pairs",
    CALLS: "calls",
    ARCHIVE_PARTS: "archive_parts",
}  # record name -> shard prefix
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
            raise OutputError(
                f"output folder {directory!r} is in use by another bioserc run ({holder}); wait for it "
                "to finish or choose another -o"
            ) from None
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


def staging_folder(output: str) -> str:
    """A new staging folder in `output`, unique to this run (workers cache lookups by its path)."""
    return output_path(output, f".staging-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


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


def json_line(row: dict) -> bytes:
    """A row as the shards write it (keys sorted): what makes driver-side rewrites byte-identical to them."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"


class JsonSink:
    """(file name, dict) -> one JSON line."""

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record) -> None:
        self._fh.write(json_line(record[1]))

    def flush(self) -> None:
        self._fh.flush()


class ParquetSink:
    """(file name, row) -> Parquet row groups of `PARQUET_ROWS_PER_GROUP` rows (only a group is held in memory)."""

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

    def flush(self) -> None:  # called once, right before the file is closed
        self._write_group()
        self._writer.close()


def _identity(name: str, row: dict) -> bytes:
    """What a record contributes to its bundle's shard name: utterance rows by their key (cheap: they are most of the
    output), every other record by its content."""
    if name in (UTTERANCES, PARQUET):
        return f"{name}\x1f{row['conversation_id']}\x1f{row['index']}\n".encode()
    return name.encode() + json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode() + b"\n"


class _WriteShardsFn(beam.DoFn):
    """Writes a bundle's records into a temporary file per kind, then renames each to `<kind>-<hash of the bundle's
    records>` when the bundle finishes. Nothing is emitted (no runner needs to carry file names downstream), and a
    bundle a runner retries with the same records replaces its earlier shards instead of adding a copy."""

    def __init__(self, staging: str, parquet_schema: pa.Schema | None):
        self.staging, self.parquet_schema = staging, parquet_schema

    def start_bundle(self) -> None:
        self.files: dict[str, tuple[str, object, JsonSink | ParquetSink]] = {}
        self.digest = hashlib.sha256()

    def process(self, record: tuple[str, dict]) -> None:
        name = record[0]
        if name not in self.files:
            temp = output_path(output_path(self.staging, ".temp"), f"{uuid.uuid4().hex}-{DESTINATIONS[name]}")
            fh = FileSystems.create(temp)
            sink = ParquetSink(self.parquet_schema) if name == PARQUET else JsonSink()
            sink.open(fh)
            self.files[name] = (temp, fh, sink)
        self.files[name][2].write(record)
        self.digest.update(_identity(name, record[1]))

    def finish_bundle(self) -> None:
        tag = self.digest.hexdigest()[:32]
        for name, (temp, fh, sink) in self.files.items():
            sink.flush()
            fh.close()
            target = output_path(self.staging, f"{DESTINATIONS[name]}-{tag}")
            if is_remote(target) and FileSystems.exists(target):
                FileSystems.delete([target])  # a gs:// rename does not replace an existing object
            FileSystems.rename([temp], [target])
        self.files = {}


class WriteShards(beam.PTransform):
    """(file name, record) pairs -> shard files `<kind>-*` in `staging`, written bundle by bundle."""

    def __init__(self, staging: str, parquet_schema: pa.Schema | None = None):
        super().__init__()
        self.staging, self.parquet_schema = staging, parquet_schema

    def expand(self, records):
        return records | "WriteFiles" >> beam.ParDo(_WriteShardsFn(self.staging, self.parquet_schema))


# -- finishing on the driver ----------------------------------------------------------------------------------------


@dataclass
class Written:
    """What the driver copied into the final files: the counts the run is reconciled against."""

    utterance_rows: int = 0
    previous_utterance_rows: int = 0  # --skip-existing: the rows kept from the previous utterances.jsonl
    conversation_rows: int = 0  # --skip-existing: every call's summary, recomputed from the merged rows
    dead_letter_rows: int = 0
    dead_letter_utterances: int = 0
    ledger: dict[str, int] = field(default_factory=dict)  # what the steps counted (see `pipelines.records`)


def shards(staging: str, name: str) -> list[str]:
    pattern = output_path(staging, f"{DESTINATIONS[name]}-*")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def concat_jsonl(
    old: list[str],
    new: list[str],
    target: str,
    count: Callable[[bytes], None] | None = None,
    count_old: Callable[[bytes], None] | None = None,
) -> None:
    """Lines of `old` then of `new` into `target`; `count` sees every line taken from `new`, `count_old` every line
    taken from `old`."""
    with FileSystems.create(target) as out:
        for src in old + new:
            counted = count if src in new else count_old
            with FileSystems.open(src) as fh:
                for line in fh:
                    if line.strip():
                        if counted:
                            counted(line)
                        out.write(line if line.endswith(b"\n") else line + b"\n")


def shard_rows(staging: str, name: str) -> Iterator[dict]:
    """Every row of the shards of one kind, parsed."""
    for src in shards(staging, name):
        with FileSystems.open(src) as fh:
            yield from (json.loads(line) for line in fh if line.strip())


def read_ledger(staging: str) -> dict[str, int]:
    """The counts the pipeline's steps wrote as ledger rows, summed."""
    return sum_ledger(shard_rows(staging, LEDGER))


def _concat_parquet(sources: list[str], target: str, schema: pa.Schema) -> None:
    with FileSystems.create(target) as out, pq.ParquetWriter(out, schema, compression="snappy") as writer:
        for src in sources:
            with FileSystems.open(src) as fh:
                reader = pq.ParquetFile(fh)
                for i in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(i).cast(schema))


def assemble_labels(staging: str, output: str, schema: pa.Schema, merge: bool) -> Written:
    """Concatenate the shards of each kind into one file in `staging`; with `merge`, the previous output file first.

    Counts the utterance rows, summaries and dead-letter rows (and the utterances those hold) it copies from shards,
    and sums the ledger. With `merge` the summaries are left out: the driver recomputes them, with the other analytics
    outputs, from the merged rows (`pipelines.analytics`).
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

    concat_jsonl(
        previous(UTTERANCES),
        shards(staging, UTTERANCES),
        output_path(staging, UTTERANCES),
        count("utterance_rows"),
        count("previous_utterance_rows"),
    )
    if not merge:
        concat_jsonl(
            [], shards(staging, CONVERSATIONS), output_path(staging, CONVERSATIONS), count("conversation_rows")
        )
    concat_jsonl([], shards(staging, DEAD), output_path(staging, DEAD), count_dead)
    _concat_parquet(previous(PARQUET) + shards(staging, PARQUET), output_path(staging, PARQUET), schema)
    written.ledger = read_ledger(staging)
    return written


def promote(staging: str, output: str, names: tuple[str, ...] = PROMOTE_ORDER) -> None:
    """Move the assembled files over the previous ones (each rename replaces one file), in the order of `names`."""
    for name in names:
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
    target = output_path(output, "failed-" + staging.rstrip("/").rsplit("/", 1)[-1].removeprefix(".staging-"))
    FileSystems.rename([staging], [target])
    return target


def print_summary(counters: dict[str, int], outputs: str, where: str, output: str, message: str) -> None:
    """What a finished `bioserc bios`/`label` run prints to stderr: its counters, where its files are (`outputs`
    names them), whether they were kept aside, and its one-line summary last."""
    print(json.dumps(counters, indent=2, sort_keys=True), file=sys.stderr)
    print(outputs, file=sys.stderr)
    if where != output:
        print(f"this run's files were kept in {where}; the previous outputs are unchanged", file=sys.stderr)
    print(message, file=sys.stderr)
