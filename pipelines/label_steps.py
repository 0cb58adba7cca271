"""The labeling pipeline's small steps before and after the model: de-duplication, --skip-existing, bios, output rows.

No step groups conversations or rows: an in-process runner holds everything that feeds a GroupByKey, so grouping
whole calls would make memory grow with the archive. De-duplication groups only small fingerprints (id, file,
digest) from a first, light read and hands the few ids that need a decision to the second read as a side input.
Each DoFn counts what it sets aside (Beam counters in the `bioserc` namespace), so the run's totals prove that every
input utterance was labelled, dead-lettered or skipped as already labelled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from bioserc.bios.extract import BioResult
from bioserc.errors import RAW_LIMIT
from bioserc.pipelines.classify import LabelRequest
from bioserc.pipelines.io import DEAD_LETTER, NAMESPACE
from bioserc.pipelines.outputs import CONVERSATIONS, DEAD, PARQUET, UTTERANCES
from bioserc.schema import Conversation


EXISTING = "existing"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


class Fingerprint(NamedTuple):
    path: str
    digest: str


def fingerprint(conv: Conversation) -> tuple[str, Fingerprint]:
    """(id, where the copy comes from and what its turns hash to): all de-duplication needs to know of a call."""
    turns = json.dumps([u.to_dict() for u in conv.utterances], ensure_ascii=False, sort_keys=True)
    return conv.id, Fingerprint(str(conv.metadata.get("source_path")), hashlib.sha256(turns.encode()).hexdigest())


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
            yield conv_id, ("skip", None)
        elif len(copies) > 1:
            identical = len({c.digest for c in copies}) == 1
            yield conv_id, ("keep", copies[0]) if identical else ("drop", len(copies))


def duplicate_row(conv: Conversation, reason: str) -> dict:
    return {"stage": "read", "path": conv.metadata.get("source_path"), "record": conv.id, "field": "id",
            "reason": reason, "utterances": len(conv.utterances), "raw": conv.to_json()[:RAW_LIMIT]}


class SelectConversations(beam.DoFn):
    """One conversation per id, by the decisions of `Decide` (a side input holding only the ids that need one)."""

    def __init__(self):
        self.c = {k: counter(k) for k in ("utterances_read", "conversations_skipped_existing",
                                           "utterances_skipped_existing", "conversations_duplicated",
                                           "utterances_duplicated", "utterances_dead_lettered")}

    def start_bundle(self):
        self.kept: set[str] = set()  # ids with a "keep" decision already passed on (copies inside one file)

    def process(self, conv: Conversation, decisions: dict[str, tuple[str, Any]]):
        n = len(conv.utterances)
        self.c["utterances_read"].inc(n)
        action, detail = decisions.get(conv.id, (None, None))
        if action == "skip":
            self.c["conversations_skipped_existing"].inc()
            self.c["utterances_skipped_existing"].inc(n)
            return
        if action is None or (action == "keep" and fingerprint(conv)[1] == detail and conv.id not in self.kept):
            if action == "keep":
                self.kept.add(conv.id)
            yield conv
            return
        self.c["conversations_duplicated"].inc()
        self.c["utterances_duplicated"].inc(n)
        self.c["utterances_dead_lettered"].inc(n)
        reason = (f"duplicate of conversation {conv.id} in {detail.path}" if action == "keep" else
                  f"conversation id {conv.id!r} appears {detail} times with different turns; ids must be unique")
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, duplicate_row(conv, reason))


class ReadDeadLetter(beam.DoFn):
    """Unreadable input records: count the utterances they held (where the reader knows it)."""

    def __init__(self):
        self.unreadable = counter("utterances_unreadable")
        self.dead = counter("utterances_dead_lettered")

    def process(self, row: dict):
        self.unreadable.inc(row.get("utterances") or 0)
        self.dead.inc(row.get("utterances") or 0)
        yield {"stage": "read", **row}


class ParseBio(beam.DoFn):
    """A `bioserc bios` output line -> (conversation_id, (speaker, bio)); the same rule as `load_bios`."""

    def __init__(self, path: str):
        self.path = path
        self.bad = counter("bio_rows_unreadable")

    def process(self, line: str):
        try:
            row = json.loads(line)
            key = (str(row["conversation_id"]), str(row["speaker"]))
        except (ValueError, KeyError, TypeError) as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"stage": "read-bios", "path": self.path, "record": None,
                                                         "field": None, "reason": f"unreadable bio row: {err}",
                                                         "utterances": 0, "raw": line[:RAW_LIMIT]})
            return
        if not row.get("error") and row.get("bio"):  # failed bios are in that run's dead letter already
            yield key[0], (key[1], str(row["bio"]))


class _Requests(beam.DoFn):
    def __init__(self, bios_expected: bool):
        self.bios_expected = bios_expected
        self.missing = counter("speakers_without_bio")

    def request(self, conv: Conversation, bios: Iterable[tuple[str, str]]) -> tuple[str, LabelRequest]:
        speakers = set(conv.speakers)
        found = {s: b for s, b in bios if s in speakers}
        if self.bios_expected:
            self.missing.inc(len(speakers - set(found)))
        return conv.id, LabelRequest(conv, found)


class AttachBios(_Requests):
    """Conversation + the bios of a `--bios` file (a side input: conversation id -> [(speaker, bio)])."""

    def process(self, conv: Conversation, bios: Any):
        yield self.request(conv, bios[conv.id])  # a multimap: missing ids give no values


class NoBios(_Requests):
    def process(self, conv: Conversation):
        yield self.request(conv, [])


class AttachGeneratedBios(_Requests):
    """(conversation, its bio results) from the bio model -> a label request; failed bios go to the dead letter."""

    def __init__(self, bios_expected: bool):
        super().__init__(bios_expected)
        self.counters = {k: counter(k) for k in ("bios_generated", "bios_cached", "bios_dead_lettered")}

    def process(self, keyed: tuple[Conversation, list[BioResult]]):
        conv, results = keyed
        for r in results:
            if r.error:
                self.counters["bios_dead_lettered"].inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"stage": "bios", "record": r.conversation_id,
                                                             "reason": r.error, **r.to_dict()})
            else:
                self.counters["bios_cached" if r.cached else "bios_generated"].inc()
        yield self.request(conv, [(r.speaker, r.bio) for r in results if not r.error])


def to_file(name: str):
    """Tag records with the output file they belong to (see `pipelines.outputs.WriteShards`)."""
    assert name in (UTTERANCES, PARQUET, CONVERSATIONS, DEAD), name
    return lambda record: (name, record)
