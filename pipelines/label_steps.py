"""The labeling pipeline's small steps before the model: keying, de-duplication, --skip-existing, bios.

Each DoFn counts what it sets aside (Beam counters in the `bioserc` namespace), so the run's totals prove that every
input utterance was labelled, dead-lettered or skipped as already labelled.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from bioserc.errors import RAW_LIMIT
from bioserc.pipelines.classify import LabelRequest
from bioserc.pipelines.io import DEAD_LETTER, NAMESPACE
from bioserc.schema import Conversation


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


class KeyConversation(beam.DoFn):
    def __init__(self):
        self.utterances = counter("utterances_read")

    def process(self, conv: Conversation):
        self.utterances.inc(len(conv.utterances))
        yield conv.id, conv


class ReadDeadLetter(beam.DoFn):
    """Unreadable input records: count the utterances they held (where the reader knows it)."""

    def __init__(self):
        self.utterances = counter("utterances_dead_lettered")

    def process(self, row: dict):
        self.utterances.inc(row.get("utterances") or 0)
        yield {"stage": "read", **row}


def duplicate_row(conv: Conversation, reason: str) -> dict:
    return {"stage": "read", "path": conv.metadata.get("source_path"), "record": conv.id, "field": "id",
            "reason": reason, "utterances": len(conv.utterances), "raw": conv.to_json()[:RAW_LIMIT]}


class SelectConversations(beam.DoFn):
    """One conversation per id: skip ids already labelled (--skip-existing) and dead-letter ambiguous duplicates.

    Copies with identical turns (one call exported twice) keep the copy from the first path; copies that differ are
    all dead-lettered, since it cannot be known which is the call.
    """

    def __init__(self):
        self.c = {k: counter(k) for k in ("conversations_skipped_existing", "utterances_skipped_existing",
                                           "conversations_duplicated", "utterances_dead_lettered")}

    def process(self, joined: tuple[str, dict[str, list]]):
        conv_id, parts = joined
        convs = sorted(parts["conversation"], key=lambda c: str(c.metadata.get("source_path")))
        if not convs:
            return
        if parts["existing"]:
            self.c["conversations_skipped_existing"].inc(len(convs))
            self.c["utterances_skipped_existing"].inc(sum(len(c.utterances) for c in convs))
            return
        if len(convs) > 1:
            self.c["conversations_duplicated"].inc(len(convs))
            turns = [[u.to_dict() for u in c.utterances] for c in convs]
            identical = all(t == turns[0] for t in turns)
            for c in convs[1:] if identical else convs:
                self.c["utterances_dead_lettered"].inc(len(c.utterances))
                reason = (f"duplicate of conversation {conv_id} in {convs[0].metadata.get('source_path')}"
                          if identical else f"conversation id {conv_id!r} appears {len(convs)} times with different "
                          "turns; ids must be unique")
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, duplicate_row(c, reason))
            if not identical:
                return
        yield conv_id, convs[0]


class ExistingIds(beam.DoFn):
    def __init__(self, model_id: str):
        self.model_id = model_id
        self.other = counter("existing_rows_other_model")

    def process(self, row: dict):
        if row.get("model_id") != self.model_id:
            self.other.inc()
        yield row["conversation_id"], True


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


class AttachBios(beam.DoFn):
    def __init__(self, bios_expected: bool):
        self.bios_expected = bios_expected
        self.missing = counter("speakers_without_bio")

    def process(self, joined: tuple[str, dict[str, list]]):
        conv_id, parts = joined
        assert len(parts["conversation"]) <= 1, f"conversation {conv_id} was not de-duplicated"
        for conv in parts["conversation"]:
            speakers = set(conv.speakers)
            bios = {s: b for s, b in parts.get("bios", []) if s in speakers}
            if self.bios_expected:
                self.missing.inc(len(speakers - set(bios)))
            yield conv_id, LabelRequest(conv, bios)
