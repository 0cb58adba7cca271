"""The analytics outputs: the archive combiner, and calls.csv / calls.parquet / archive.json on the driver.

In `bioserc label` the emitting step (`label_steps.EmitResults`) summarises each labelled call (`bioserc.analytics`),
writes its summary and calls-table row as shard records, and adds it to a per-batch `ArchiveCombineFn` accumulator
that it emits as one archive partial. The label pipeline stays one chain with one sink (see `pipelines.records`: no
`CombineGlobally` branch, which Beam's Dask runner would skip); the driver then merges the partials with the same
combiner (`assemble_analytics`), so archive.json comes out the same on every runner, in memory that does not grow
with the archive. With --skip-existing, and in `bioserc summarize`, every summary and the archive are recomputed from
utterances.jsonl instead (`recompute`), streamed call by call: the same functions, so the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from bioserc.analytics.archive import ArchiveTotals
from bioserc.analytics.calls import CALLS_COLUMNS, CALLS_SCHEMA_VERSION, calls_row, summarise
from bioserc.analytics.thresholds import Thresholds
from bioserc.pipelines.io import output_path
from bioserc.pipelines.outputs import (
    ARCHIVE,
    ARCHIVE_PARTS,
    CALLS,
    CALLS_CSV,
    CALLS_PARQUET,
    CONVERSATIONS,
    UTTERANCES,
    ParquetSink,
    json_line,
    shard_rows,
)


_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
CALLS_SCHEMA = pa.schema(
    [(name, _ARROW[kind]) for name, kind in CALLS_COLUMNS],
    metadata={"bioserc_calls_schema_version": str(CALLS_SCHEMA_VERSION)},
)
REQUIRED = ("conversation_id", "index", "speaker", "label", "probs")  # what a summary needs of an utterance row


class ArchiveCombineFn(beam.CombineFn):
    """Call summaries -> archive.json's content (`bioserc.analytics.archive.ArchiveTotals`); usable with
    `beam.CombineGlobally`, and by hand where the pipeline cannot branch."""

    def __init__(self, thresholds: Thresholds):
        super().__init__()
        self.thresholds = thresholds

    def create_accumulator(self) -> ArchiveTotals:
        return ArchiveTotals(self.thresholds.review_calls)

    def add_input(self, accumulator: ArchiveTotals, summary: dict[str, Any]) -> ArchiveTotals:
        return accumulator.add(summary)

    def merge_accumulators(self, accumulators: Iterable[ArchiveTotals]) -> ArchiveTotals:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: ArchiveTotals) -> dict[str, Any]:
        return accumulator.extract(self.thresholds)


def write_archive(archive: dict[str, Any], path: str) -> None:
    with FileSystems.create(path, mime_type="application/json") as fh:
        fh.write((json.dumps(archive, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))


class CallsWriter:
    """calls.csv (one header) and calls.parquet (row groups of `outputs.PARQUET_ROWS_PER_GROUP`) in `folder`, row by
    row; use as a context manager."""

    def __init__(self, folder: str):
        self._csv_fh = FileSystems.create(output_path(folder, CALLS_CSV), mime_type="text/csv")
        self._line = io.StringIO()  # one row at a time, encoded: the file handle gets bytes, as every writer here
        self._csv = csv.writer(self._line, lineterminator="\n")
        self._write_csv([name for name, _ in CALLS_COLUMNS])
        self._parquet_fh = FileSystems.create(output_path(folder, CALLS_PARQUET))
        self._parquet = ParquetSink(CALLS_SCHEMA)
        self._parquet.open(self._parquet_fh)

    def _write_csv(self, values: list[Any]) -> None:
        self._csv.writerow(values)
        self._csv_fh.write(self._line.getvalue().encode("utf-8"))
        self._line.seek(0)
        self._line.truncate()

    def write(self, row: dict[str, Any]) -> None:
        self._write_csv([row[name] for name, _ in CALLS_COLUMNS])
        self._parquet.write((CALLS, row))

    def __enter__(self) -> CallsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._csv_fh.close()
        self._parquet.flush()
        self._parquet_fh.close()


class SummarizeError(ValueError):
    """utterances.jsonl cannot be summarised: a line that is not a row, named by file and line."""


def _probabilities(probs: Any) -> bool:
    return isinstance(probs, dict) and all(type(p) in (int, float) for p in probs.values())


def calls_of(path: str) -> Iterator[list[dict[str, Any]]]:
    """The rows of each call of an utterances.jsonl, in file order (a call's rows are contiguous, as `bioserc label`
    writes them): only one call is held at a time."""
    rows: list[dict[str, Any]] = []
    with FileSystems.open(path) as fh:
        for number, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SummarizeError(f"{path} line {number}: not JSON ({err.msg})") from None
            missing = [k for k in REQUIRED if not isinstance(row, dict) or row.get(k) is None]
            if missing or not _probabilities(row["probs"]):
                raise SummarizeError(
                    f"{path} line {number}: not an utterance row (field {(missing or ['probs'])[0]!r}"
                    " missing or malformed)"
                )
            if rows and row["conversation_id"] != rows[0]["conversation_id"]:
                yield rows
                rows = []
            rows.append(row)
    if rows:
        yield rows


@dataclass
class Analytics:
    archive: dict[str, Any]  # archive.json's content
    calls: int  # summaries written


def recompute(utterances: str, folder: str, thresholds: Thresholds) -> Analytics:
    """conversations.jsonl, calls.csv, calls.parquet and archive.json in `folder`, from an utterances.jsonl."""
    combine = ArchiveCombineFn(thresholds)
    totals, calls = combine.create_accumulator(), 0
    with FileSystems.create(output_path(folder, CONVERSATIONS)) as out, CallsWriter(folder) as table:
        for rows in calls_of(utterances):
            try:
                summary = summarise(rows, thresholds)
            except (TypeError, ValueError) as err:  # e.g. turn indices that are not all numbers
                raise SummarizeError(f"{utterances}: conversation {rows[0]['conversation_id']}: {err}") from None
            out.write(json_line(summary))
            table.write(calls_row(summary))
            totals = combine.add_input(totals, summary)
            calls += 1
    archive = combine.extract_output(totals)
    write_archive(archive, output_path(folder, ARCHIVE))
    return Analytics(archive, calls)


def archive_problems(archive: dict[str, Any], rows: int) -> list[str]:
    """The ways archive.json's totals fail to account for the `rows` utterance rows written (a sentence each)."""
    problems = []
    if archive["utterances"] != rows:
        problems.append(f"archive.json counts {archive['utterances']} utterances but {rows} rows were written")
    if sum(archive["labels"].values()) != archive["utterances"]:
        problems.append(
            f"archive.json's label totals add up to {sum(archive['labels'].values())}, not its "
            f"{archive['utterances']} utterances"
        )
    return problems


def assemble_analytics(staging: str, thresholds: Thresholds, merge: bool) -> Analytics:
    """The analytics outputs of a label run in `staging`: from its calls-table rows and archive partials, or, with
    `merge` (--skip-existing), recomputed from the merged utterances.jsonl so old and new calls are covered alike."""
    if merge:
        return recompute(output_path(staging, UTTERANCES), staging, thresholds)
    with CallsWriter(staging) as table:
        for row in shard_rows(staging, CALLS):
            table.write(row)
    combine = ArchiveCombineFn(thresholds)
    totals = combine.create_accumulator()
    for partial in shard_rows(staging, ARCHIVE_PARTS):  # one at a time: memory stays that of one accumulator
        totals = combine.merge_accumulators([totals, ArchiveTotals.from_dict(partial)])
    archive = combine.extract_output(totals)
    write_archive(archive, output_path(staging, ARCHIVE))
    return Analytics(archive, archive["calls"])
