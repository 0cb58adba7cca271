"""The labeling pipeline's small steps before and after the model: de-duplication, --skip-existing, bios, and
`EmitResults`, which turns the classifier's outcomes into output records (rows: `pipelines.rows`).

No step groups conversations or rows: an in-process runner holds everything that feeds a GroupByKey, so grouping
whole calls would make memory grow with the archive. De-duplication groups only small fingerprints (id, file,
digest) in a first, light pipeline, which writes the few ids that need a decision (and the pairs of a --bios file)
as lookup shards into the staging folder; the labeling pipeline's workers load them once per process. Not Beam side
inputs: Beam's Dask runner recomputes a side input inside every task that reads it, and an in-process runner cannot
stream the main read through a step that waits for one.
Steps take and hand on batches (`pipelines.records.WorkBatch`); each counts what it read and set aside in ledger rows
that ride with the batch, so the run's totals prove that every input utterance was labelled, dead-lettered or skipped
as already labelled, on any runner.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from bioserc.analytics.calls import calls_row, summarise
from bioserc.analytics.thresholds import Thresholds
from bioserc.errors import RAW_LIMIT
from bioserc.jsonio import open_text
from bioserc.models.collate import Bio, BioKey, row_bio
from bioserc.pipelines.analytics import ArchiveCombineFn
from bioserc.pipelines.classifier_handler import LabelRequest
from bioserc.pipelines.io import open_raw
from bioserc.pipelines.outputs import (
    ARCHIVE_PARTS,
    BIO_PAIRS,
    CALLS,
    CONVERSATIONS,
    DECISIONS,
    PARQUET,
    UTTERANCES,
    shard_rows,
)
from bioserc.pipelines.records import DEAD, WorkBatch, ledger
from bioserc.pipelines.rows import failed_utterance_rows, parquet_row, utterance_rows
from bioserc.readers.base import MAX_FILE_BYTES
from bioserc.readers.sources import read_path
from bioserc.schema import Conversation


EXISTING = "existing"


class Fingerprint(NamedTuple):
    path: str
    digest: str


def fingerprint(conv: Conversation) -> tuple[str, Fingerprint]:
    """(id, where the copy comes from and what its turns hash to): all de-duplication needs to know of a call."""
    turns = json.dumps([u.to_dict() for u in conv.utterances], ensure_ascii=False, sort_keys=True)
    return conv.id, Fingerprint(str(conv.metadata.get("source_path")), hashlib.sha256(turns.encode()).hexdigest())


class Fingerprints(beam.DoFn):
    """A group of files -> (id, Fingerprint) of each readable conversation (bad records are the main read's job)."""

    def __init__(self, fmt: str, options: dict[str, Any], max_bytes: int = MAX_FILE_BYTES):
        self.fmt, self.options, self.max_bytes = fmt, options, max_bytes

    def process(self, group: list[str]) -> Iterator[tuple[str, Fingerprint]]:
        for path in group:
            for item in read_path(path, self.fmt, self.max_bytes, opener=open_raw, **self.options):
                if isinstance(item, Conversation):
                    yield fingerprint(item)


def existing_id(line: str) -> tuple[str, str]:
    """A previous run's conversations.jsonl line -> (id, EXISTING)."""
    return str(json.loads(line)["conversation_id"]), EXISTING


class Decide(beam.DoFn):
    """Every copy of one id (and whether a previous run labelled it) -> a decision, only for ids that need one.

    Copies with identical turns (one call exported twice) keep the copy from the first path; copies that differ are
    all dead-lettered, since it cannot be known which is the call. Ids labelled before are skipped (--skip-existing).
    """

    def process(self, keyed: tuple[str, Iterable[Any]]):
        conv_id, seen = keyed[0], list(keyed[1])
        copies = sorted(s for s in seen if isinstance(s, Fingerprint))
        if not copies:
            return
        if EXISTING in seen:
            yield DECISIONS, {"id": conv_id, "action": "skip"}
        elif len(copies) > 1:
            if len({c.digest for c in copies}) == 1:
                yield DECISIONS, {"id": conv_id, "action": "keep", "path": copies[0].path, "digest": copies[0].digest}
            else:
                yield DECISIONS, {"id": conv_id, "action": "drop", "copies": len(copies)}


@functools.lru_cache(maxsize=1)
def load_decisions(staging: str) -> dict[str, tuple[str, Any]]:
    """id -> (action, detail) from the decision shards; read once per worker process (on Dask every partition gets
    a fresh DoFn)."""
    return {
        row["id"]: (
            row["action"],
            Fingerprint(row["path"], row["digest"]) if row["action"] == "keep" else row.get("copies"),
        )
        for row in shard_rows(staging, DECISIONS)
    }


@functools.lru_cache(maxsize=1)
def load_bio_pairs(staging: str) -> dict[str, list[tuple[str, Bio]]]:
    """conversation id -> [(speaker, bio or profile vector)] from the bio-pair shards (a --bios file, parsed once);
    once per process."""
    bios: dict[str, list[tuple[str, Bio]]] = {}
    for row in shard_rows(staging, BIO_PAIRS):
        bios.setdefault(row["conversation_id"], []).append((row["speaker"], row["bio"]))
    return bios


def duplicate_row(conv: Conversation, reason: str) -> dict:
    return {
        "stage": "read",
        "path": conv.metadata.get("source_path"),
        "record": conv.id,
        "field": "id",
        "reason": reason,
        "utterances": len(conv.utterances),
        "raw": conv.to_json()[:RAW_LIMIT],
    }


class SelectConversations(beam.DoFn):
    """One conversation per id, by the decisions of `Decide` (only the ids that need one, see `load_decisions`)."""

    def __init__(self, staging: str):
        self.staging = staging

    def setup(self):
        self.decisions = load_decisions(self.staging)

    def start_bundle(self):
        self.kept: set[str] = set()  # ids with a "keep" decision already passed on (copies inside one file)

    def process(self, batch: WorkBatch):
        kept, dead, c = (
            [],
            [],
            dict.fromkeys(
                (
                    "utterances_read",
                    "conversations_skipped_existing",
                    "utterances_skipped_existing",
                    "conversations_duplicated",
                    "utterances_duplicated",
                ),
                0,
            ),
        )
        for conv in batch:
            n = len(conv.utterances)
            c["utterances_read"] += n
            action, detail = self.decisions.get(conv.id, (None, None))
            if action == "skip":
                c["conversations_skipped_existing"] += 1
                c["utterances_skipped_existing"] += n
            elif action is None or (action == "keep" and fingerprint(conv)[1] == detail and conv.id not in self.kept):
                if action == "keep":
                    self.kept.add(conv.id)
                kept.append(conv)
            else:
                c["conversations_duplicated"] += 1
                c["utterances_duplicated"] += n
                reason = (
                    f"duplicate of conversation {conv.id} in {detail.path}"
                    if action == "keep"
                    else f"conversation id {conv.id!r} appears {detail} times with different turns; ids must be unique"
                )
                dead.append((DEAD, duplicate_row(conv, reason)))
        yield batch.then(
            kept, *dead, *ledger("select", batch.key, **c, utterances_dead_lettered=c["utterances_duplicated"])
        )


def bio_row(line: str) -> tuple[dict[str, Any], BioKey]:
    """A bios.jsonl line -> (row, (conversation_id, speaker)); ValueError, KeyError or TypeError when unreadable."""
    row = json.loads(line)
    return row, (str(row["conversation_id"]), str(row["speaker"]))


class ParseBio(beam.DoFn):
    """A `bioserc bios` output line -> a bio-pair record (conversation_id, speaker, bio: text, or the vector of a
    `profile` model); the rule of `load_bios` (`row_bio`). An unreadable line is a dead letter; a row of another
    profile or vector size than the model's (`dim`) raises, since the model would label with wrong profiles: the
    driver checks local files first (`check_bios`), so that error comes before any work."""

    def __init__(self, path: str, profile: str = "text", dim: int = 0):
        self.path, self.profile, self.dim = path, profile, dim

    def process(self, line: str):
        try:
            row, key = bio_row(line)
        except (ValueError, KeyError, TypeError) as err:
            yield (
                DEAD,
                {
                    "stage": "read-bios",
                    "path": self.path,
                    "record": None,
                    "field": None,
                    "reason": f"unreadable bio row: {err}",
                    "utterances": 0,
                    "raw": line[:RAW_LIMIT],
                },
            )
            yield from ledger("read-bios", line[:RAW_LIMIT], bio_rows_unreadable=1)
            return
        bio = row_bio(self.path, f"conversation {key[0]} speaker {key[1]}", row, self.profile, self.dim or None)
        if bio is not None:  # failed bios are in that run's dead letter already
            yield BIO_PAIRS, {"conversation_id": key[0], "speaker": key[1], "bio": bio}


def check_bios(paths: Iterable[str], profile: str, dim: int) -> None:
    """Every readable row of these local bios files suits a model of `profile` (`ParseBio`'s rule), or a
    `RecordError` naming the file, line and field: checked on the driver before anything runs, where the pipeline
    would only fail inside a worker."""
    for path in paths:
        with open_text(path) as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row, _ = bio_row(line)
                except (ValueError, KeyError, TypeError):
                    continue  # blank or unreadable: `ParseBio` dead-letters it
                row_bio(path, f"line {number}", row, profile, dim or None)


class _Requests(beam.DoFn):
    def __init__(self, bios_expected: bool):
        self.bios_expected = bios_expected

    def requests(
        self,
        batch: WorkBatch,
        convs: list[Conversation],
        bios: list[Iterable[tuple[str, Bio]]],
        *records: tuple[str, Any],
        **counts: int,
    ) -> WorkBatch:
        """The batch's label requests, with `records` and the step's ledger row (speakers left without a bio,
        `counts`)."""
        out, missing = [], 0
        for conv, pairs in zip(convs, bios, strict=True):
            speakers = set(conv.speakers)
            found = {s: b for s, b in pairs if s in speakers}
            missing += len(speakers - set(found))
            out.append(LabelRequest(conv, found))
        return batch.then(
            out,
            *records,
            *ledger("bios", batch.key, **counts, speakers_without_bio=missing if self.bios_expected else 0),
        )


class AttachBios(_Requests):
    """Conversations + the bios of a `--bios` file (see `load_bio_pairs`)."""

    def __init__(self, bios_expected: bool, staging: str):
        super().__init__(bios_expected)
        self.staging = staging

    def setup(self):
        self.bios = load_bio_pairs(self.staging)

    def process(self, batch: WorkBatch):
        yield self.requests(batch, batch, [self.bios.get(conv.id, []) for conv in batch])


class NoBios(_Requests):
    def process(self, batch: WorkBatch):
        yield self.requests(batch, batch, [[] for _ in batch])


class AttachGeneratedBios(_Requests):
    """(conversation, its bio results) pairs from the bio model -> label requests with each speaker's bio (a vector for
    the scores/latent profiles); failed bios are dead letters."""

    def process(self, batch: WorkBatch):
        c, dead = dict.fromkeys(("bios_generated", "bios_cached", "bios_dead_lettered"), 0), []
        for _, results in batch:
            for r in results:
                if r.error:
                    c["bios_dead_lettered"] += 1
                    dead.append(
                        (
                            DEAD,
                            {
                                "stage": "bios",
                                "record": r.conversation_id,
                                "reason": r.error,
                                "utterances": 0,
                                **r.to_dict(),
                            },
                        )
                    )
                else:
                    c["bios_cached" if r.cached else "bios_generated"] += 1
        yield self.requests(
            batch,
            [conv for conv, _ in batch],
            [
                [(r.speaker, r.bio if r.vector is None else r.vector) for r in results if not r.error]
                for _, results in batch
            ],
            *dead,
            **c,
        )


class EmitResults(beam.DoFn):
    """A batch of (request, outcome) -> the records it carries, then utterance rows (JSONL and Parquet), a summary and
    a calls-table row per labelled conversation, a dead letter per utterance of a failed one, the batch's archive
    partial (its labelled calls in an `ArchiveCombineFn` accumulator, merged by the driver) and its counts."""

    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds
        self.archive = ArchiveCombineFn(thresholds)

    def process(self, batch: WorkBatch):
        yield from batch.records
        c = dict.fromkeys(
            ("conversations_labeled", "utterances_labeled", "conversations_failed", "utterances_failed"), 0
        )
        totals = self.archive.create_accumulator()
        for _, outcome in batch:
            conv = outcome.request.conversation
            if outcome.error is None:
                rows = utterance_rows(outcome)
                c["conversations_labeled"] += 1
                c["utterances_labeled"] += len(rows)
                for row in rows:
                    yield UTTERANCES, row
                    yield PARQUET, parquet_row(row)
                summary = summarise(rows, self.thresholds)
                yield CONVERSATIONS, summary
                yield CALLS, calls_row(summary)
                totals = self.archive.add_input(totals, summary)
                continue
            c["conversations_failed"] += 1
            c["utterances_failed"] += len(conv.utterances)
            for row in failed_utterance_rows(outcome):
                yield DEAD, row
        if totals.calls:
            yield ARCHIVE_PARTS, totals.to_dict()
        yield from ledger("emit", batch.key, **c, utterances_dead_lettered=c["utterances_failed"])
