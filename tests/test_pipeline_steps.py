"""The pipelines' main steps one at a time, with Beam's `TestPipeline` and `assert_that` (Beam `base_test.py` style).

    .venv/bin/python -m pytest -q tests/test_pipeline_steps.py

Fake model handlers and hand-made batches, no model: each test runs one step (or the short chain it needs) on Beam's
in-process runner. The end-to-end runs are in test_label_pipeline.py and test_bios.py; the last two tests here pass a
`TestPipeline` to `run(argv, test_pipeline=...)` of each pipeline.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest


beam = pytest.importorskip("apache_beam")

from apache_beam.ml.inference.base import ModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing import test_pipeline as beam_testing  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from bioserc.analytics.thresholds import Thresholds  # noqa: E402
from bioserc.bios.base import Generation, LLMBackend  # noqa: E402
from bioserc.bios.extract import BioResult  # noqa: E402
from bioserc.models.predict import Prediction  # noqa: E402
from bioserc.pipelines.bio_steps import BioRecords  # noqa: E402
from bioserc.pipelines.classifier_handler import LabelOutcome, LabelRequest  # noqa: E402
from bioserc.pipelines.io import ParseFiles  # noqa: E402
from bioserc.pipelines.label_steps import (  # noqa: E402
    EXISTING,
    AttachGeneratedBios,
    Decide,
    EmitResults,
    Fingerprint,
    NoBios,
    SelectConversations,
    fingerprint,
)
from bioserc.pipelines.outputs import ARCHIVE_PARTS, BIOS, CALLS, CONVERSATIONS, PAPER, PARQUET, UTTERANCES  # noqa: E402
from bioserc.pipelines.records import DEAD, LEDGER, BatchedModelHandler, WorkBatch  # noqa: E402
from bioserc.schema import Conversation, Utterance  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "joy", "anger"]


def in_process() -> beam_testing.TestPipeline:
    """Beam's TestPipeline on the in-process runner (the default DirectRunner would first look for Prism); imported
    by module so that pytest does not collect the class."""
    return beam_testing.TestPipeline(options=PipelineOptions(["--runner", "FnApiRunner"]))


def conv(cid: str, *turns: tuple[str, str]) -> Conversation:
    return Conversation(cid, [Utterance(i, s, t) for i, (s, t) in enumerate(turns)], {"source_path": f"{cid}.json"})


CALL = conv("c1", ("AGENT", "Hello, how can I help?"), ("CUSTOMER", "My card was charged twice."))
OTHER = conv("c2", ("AGENT", "Good morning."))


def ledger_of(records) -> Counter:
    """The counts of the ledger records among (file name, row) records, summed."""
    totals: Counter = Counter()
    for name, row in records:
        if name == LEDGER:
            totals.update({k: v for k, v in row.items() if k not in ("step", "key")})
    return totals


def shape(batch: WorkBatch) -> tuple:
    """What a test compares of a batch: its key, its items (a conversation by its id) and its records' names."""
    items = [item.id if isinstance(item, Conversation) else item for item in batch]
    return batch.key, items, sorted(name for name, _ in batch.records)


def test_parse_files_cuts_batches_and_dead_letters_bad_records(tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_text(f"{CALL.to_json()}\n{{not json\n{OTHER.to_json()}\n")
    with in_process() as p:
        batches = (
            p
            | beam.Create([[str(path)]])
            | beam.ParDo(ParseFiles("jsonl", {}, batch=1, count_utterances=True))
            | beam.Map(shape)
        )
        # a bad record rides with the batch being filled; the counts with the last one
        assert_that(batches, equal_to([(f"{path}#0", ["c1"], [DEAD]), (f"{path}#1", ["c2"], [LEDGER])]))


def test_decide_keeps_one_identical_copy_drops_differing_ones_and_skips_existing():
    same, other = Fingerprint("a.json", "d1"), Fingerprint("b.json", "d2")
    keyed = [
        ("twice", [Fingerprint("b.json", "d1"), same]),
        ("clash", [same, other]),
        ("old", [same, EXISTING]),
        ("once", [same]),
        ("gone", [EXISTING]),
    ]
    with in_process() as p:
        decisions = p | beam.Create(keyed) | beam.ParDo(Decide()) | beam.Map(lambda record: record[1])
        assert_that(
            decisions,
            equal_to(
                [
                    {"id": "twice", "action": "keep", "path": "a.json", "digest": "d1"},
                    {"id": "clash", "action": "drop", "copies": 2},
                    {"id": "old", "action": "skip"},
                ]
            ),
        )


def test_select_conversations_follows_the_decisions(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    decisions = [{"id": "c1", "action": "skip"}, {"id": "c2", "action": "drop", "copies": 2}]
    (staging / "decisions-0").write_text("".join(json.dumps(d) + "\n" for d in decisions))
    third = conv("c3", ("AGENT", "Bye."))
    with in_process() as p:
        batches = (
            p | beam.Create([WorkBatch("k", [CALL, OTHER, third])]) | beam.ParDo(SelectConversations(str(staging)))
        )
        assert_that(batches | beam.Map(shape), equal_to([("k", ["c3"], [DEAD, LEDGER])]), label="Kept")
        counts = batches | beam.Map(lambda batch: dict(ledger_of(batch.records)))
        assert_that(
            counts,
            equal_to(
                [
                    {
                        "utterances_read": 4,
                        "conversations_skipped_existing": 1,
                        "utterances_skipped_existing": 2,
                        "conversations_duplicated": 1,
                        "utterances_duplicated": 1,
                        "utterances_dead_lettered": 1,
                    }
                ]
            ),
            label="Counted",
        )
    assert fingerprint(CALL)[0] == "c1"


class LengthHandler(ModelHandler[str, int, None]):
    """A fake model: the length of each text."""

    def load_model(self) -> None:
        return None

    def run_inference(self, batch, model, inference_args=None):
        return [len(text) for text in batch]


def test_batched_model_handler_runs_each_batch_as_it_comes_and_keeps_its_records():
    batches = [WorkBatch("a", ["hi", "hello"], [(DEAD, {"x": 1})]), WorkBatch("b", [])]
    with in_process() as p:
        out = p | beam.Create(batches) | RunInference(BatchedModelHandler(LengthHandler())) | beam.Map(shape)
        assert_that(out, equal_to([("a", [("hi", 2), ("hello", 5)], [DEAD]), ("b", [], [])]))


def test_no_bios_and_generated_bios_make_label_requests():
    ok = BioResult("c1", "AGENT", "A calm agent.", "m", "bio-v1")
    failed = BioResult("c1", "CUSTOMER", "", "m", "bio-v1", error="generation failed: boom")

    def requests(batch: WorkBatch) -> tuple:
        return [(r.conversation.id, r.bios) for r in batch], dict(ledger_of(batch.records))

    with in_process() as p:
        none = (
            p
            | "None" >> beam.Create([WorkBatch("k", [CALL])])
            | beam.ParDo(NoBios(True))
            | "NoneOut" >> beam.Map(requests)
        )
        assert_that(none, equal_to([([("c1", {})], {"speakers_without_bio": 2})]), label="NoBios")
        made = (
            p
            | "Made" >> beam.Create([WorkBatch("k", [(CALL, [ok, failed])])])
            | beam.ParDo(AttachGeneratedBios(True))
            | "MadeOut" >> beam.Map(requests)
        )
        assert_that(
            made,
            equal_to(
                [
                    (
                        [("c1", {"AGENT": "A calm agent."})],
                        {"bios_generated": 1, "bios_dead_lettered": 1, "speakers_without_bio": 1},
                    )
                ]
            ),
            label="Generated",
        )


def test_bio_records_split_results_into_bios_dead_letters_and_paper_entries():
    ok = BioResult("c1", "AGENT", "A calm agent.", "m", "bio-v1", cached=True)
    failed = BioResult("c1", "CUSTOMER", "", "m", "bio-v1", error="too long")
    with in_process() as p:
        records = (
            p
            | beam.Create([WorkBatch("k", [(CALL, [ok, failed])], [(DEAD, {"stage": "read"})])])
            | beam.ParDo(BioRecords())
        )
        assert_that(
            records | beam.Map(lambda record: record[0]), equal_to([DEAD, BIOS, DEAD, PAPER, LEDGER]), label="Names"
        )
        paper = records | beam.Filter(lambda record: record[0] == PAPER) | beam.Map(lambda record: record[1])
        assert_that(paper, equal_to([{"conversation_id": "c1", "bios": ["A calm agent.", ""]}]), label="Paper")


def test_emit_results_writes_rows_summaries_and_dead_letters():
    labelled = LabelOutcome(
        LabelRequest(CALL, {"AGENT": "A calm agent."}),
        "model-1",
        LABELS,
        [Prediction("c1", 0, "neutral", [0.8, 0.1, 0.1]), Prediction("c1", 1, "anger", [0.1, 0.1, 0.8])],
    )
    failed = LabelOutcome(LabelRequest(OTHER), "model-1", LABELS, error="RuntimeError: boom")
    with in_process() as p:
        records = (
            p
            | beam.Create([WorkBatch("k", [(labelled.request, labelled), (failed.request, failed)])])
            | beam.ParDo(EmitResults(Thresholds()))
        )
        names = records | beam.Map(lambda record: record[0]) | beam.combiners.Count.PerElement()
        assert_that(
            names,
            equal_to(
                [
                    (UTTERANCES, 2),
                    (PARQUET, 2),
                    (CONVERSATIONS, 1),
                    (CALLS, 1),
                    (DEAD, 1),
                    (ARCHIVE_PARTS, 1),
                    (LEDGER, 1),
                ]
            ),
            label="Counts",
        )
        rows = (
            records
            | beam.Filter(lambda record: record[0] == UTTERANCES)
            | beam.Map(lambda record: (record[1]["index"], record[1]["label"], record[1]["bio"]))
        )
        assert_that(rows, equal_to([(0, "neutral", "A calm agent."), (1, "anger", None)]), label="Rows")
        dead = (
            records
            | "Dead" >> beam.Filter(lambda record: record[0] == DEAD)
            | "DeadRow" >> beam.Map(lambda record: (record[1]["record"], record[1]["reason"]))
        )
        assert_that(dead, equal_to([("c2 utterance 0", "RuntimeError: boom")]), label="DeadLetters")


class EchoBackend(LLMBackend):
    """A fake LLM: the same bio for everyone."""

    name, model_id, max_context = "echo", "echo-1", 4096

    def count_tokens(self, messages):
        return sum(len(m["content"]) for m in messages) // 4 + 4

    def generate(self, batch, config):
        return [Generation(" a calm speaker who talks about a card.", 50, 8, "stop") for _ in batch]


def test_bios_run_takes_a_test_pipeline(tmp_path, monkeypatch):
    from bioserc.bios import backends
    from bioserc.pipelines import bios_pipeline

    monkeypatch.setattr(backends, "make_backend", lambda kind, model, **kw: EchoBackend())
    path = tmp_path / "calls.jsonl"
    path.write_text(f"{CALL.to_json()}\n")
    result = bios_pipeline.run(
        [str(path), "-o", str(tmp_path / "out"), "--model", "unused"], test_pipeline=in_process()
    )
    assert result.exit_code == 0 and result.counters["bios_generated"] == 2
    assert len((tmp_path / "out" / "bios.jsonl").read_text().splitlines()) == 2


def test_label_run_takes_a_test_pipeline(tmp_path):
    from bioserc.pipelines import label_pipeline

    path = tmp_path / "calls.jsonl"
    path.write_text(f"{CALL.to_json()}\n{OTHER.to_json()}\n")
    outcome = label_pipeline.run(
        [
            str(path),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(ROOT / "serving_artifacts" / "default"),
            "--no-bios",
            "--report-calls",
            "0",
        ],
        test_pipeline=in_process(),
    )
    assert outcome.exit_code == 0 and not outcome.problems
    assert outcome.counters["utterances_labeled"] == 3
    assert len((tmp_path / "out" / "utterances.jsonl").read_text().splitlines()) == 3
