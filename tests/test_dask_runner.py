"""`bioserc label` and `bioserc bios` on a real Dask cluster give what Beam's in-process runner gives.

A `distributed` scheduler and two worker processes are started on loopback for this module (and stopped after it).
Each pipeline runs twice on the same inputs, in-process and with `--runner ...DaskRunner --dask_client_address`,
and the outputs must be the same: every row, label, summary, calls-table row, dead letter and counter, and
archive.json byte for byte (merged from partials the workers wrote). The workers are other processes: nothing is
monkeypatched here, the models are real folders (the committed default classifier, a tiny random BiosercBert with
bios, a tiny random Llama for `bioserc bios`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from test_label_pipeline import make_artifact
from tiny_llm import tiny_llama

from bioserc.jsonio import read_jsonl
from bioserc.pipelines import bios_pipeline, label_pipeline, runner
from bioserc.pipelines.options import parse_pipeline_args
from bioserc.readers import read_items
from bioserc.schema import Conversation


distributed = pytest.importorskip(
    "distributed", reason="the Dask runner needs the dask extra: pip install 'bioserc[dask]'"
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "transcripts"
FIXTURES = ROOT / "tests" / "fixtures" / "transcripts"
DEFAULT_MODEL = str(ROOT / "serving_artifacts" / "default")
DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes on 127.0.0.1, as `dask scheduler` + `dask worker` give."""
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"},
    ) as local:
        yield local.scheduler_address


def on_dask(address: str, *extra: str) -> list[str]:
    return ["--runner", DASK, "--dask_client_address", address, *extra]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """The demo calls, the reader fixtures, and bad input: a torn file, a bad turn, a torn row, an identical copy of a
    call and a different call under a taken id."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "torn.json").write_text('{"JobStatus": "COMPLETED", "Transcript": [ {"Content": "hi"')
    (bad / "tca-bad-role.json").write_text(
        json.dumps(
            {
                "JobStatus": "COMPLETED",
                "Transcript": [
                    {"Content": "Hello.", "ParticipantRole": "AGENT"},
                    {"Content": "Hi.", "ParticipantRole": "ROBOT"},
                ],
            }
        )
    )
    (bad / "rows.jsonl").write_text(
        json.dumps({"conversation_id": "row-call", "speaker": "AGENT", "text": "Hello."}) + "\n{torn line\n"
    )
    shutil.copy(DEMO / "ccai-moving-house-6631.json", bad / "ccai-moving-house-6631.json")
    clash = Conversation.from_dict(
        {
            "id": "tca-happy-renewal-7302",
            "utterances": [
                {"index": 0, "speaker": "AGENT", "text": "Hello."},
                {"index": 1, "speaker": "CUSTOMER", "text": "Hi."},
            ],
        }
    )
    (bad / "clash.jsonl").write_text(clash.to_json() + "\n")
    return [str(DEMO), str(FIXTURES), str(bad)]


def by_content(rows: list[dict]) -> list[str]:
    """Rows in a runner-independent order (shards are concatenated in hash order), timings left out."""
    return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rows)


def label_outputs(out: Path) -> dict:
    """Rows by content; archive.json as it is: merged from the workers' partials, it must not depend on the runner."""
    run = json.loads((out / "run.json").read_text())
    return {
        name: by_content(list(read_jsonl(str(out / name))))
        for name in ("utterances.jsonl", "conversations.jsonl", "dead_letter.jsonl")
    } | {
        "calls.csv": sorted((out / "calls.csv").read_text().splitlines()),
        "archive.json": (out / "archive.json").read_text(),
        "counters": run["counters"],
        "written": run["written"],
        "problems": run["problems"],
        "exit_code": run["exit_code"],
    }


def label_both(tmp: Path, address: str, argv: list[str]) -> tuple[dict, dict]:
    outs = {}
    for name, extra in (("local", []), ("dask", on_dask(address))):
        assert label_pipeline.main([*argv, "-o", str(tmp / name), "--report-calls", "0", *extra]) in (0, 1)
        outs[name] = label_outputs(tmp / name)
    return outs["local"], outs["dask"]


def test_label_on_dask_matches_the_in_process_runner(cluster, inputs, tmp_path):
    local, dask = label_both(
        tmp_path, cluster, [*inputs, "--model", DEFAULT_MODEL, "--no-bios", "--conversations-per-batch", "4"]
    )
    assert dask == local
    items = list(read_items(inputs))
    total = sum(len(i.utterances) if isinstance(i, Conversation) else i.utterances for i in items)
    c = dask["counters"]
    assert c["utterances_labeled"] + c["utterances_dead_lettered"] == total == 135 + 2 + 1 + 1 + 8 + 2
    assert (c["conversations_duplicated"], c["input_records_dead_lettered"]) == (3, 3)
    assert dask["problems"] == [] and dask["exit_code"] == 1  # dead letters, no --allow-skips
    assert {json.loads(d)["stage"] for d in dask["dead_letter.jsonl"]} == {"read"}


def test_label_with_a_bios_file_on_dask_matches(cluster, inputs, tmp_path):
    """The bios file is parsed by the first pipeline and looked up by the workers; the model reads bios (bio_mode
    mlp)."""
    bios = tmp_path / "bios.jsonl"
    bios.write_text(
        "\n".join(
            [
                json.dumps({"conversation_id": "tca-billing-overcharge-2211", "speaker": "CUSTOMER", "bio": "angry."}),
                json.dumps({"conversation_id": "ccai-moving-house-6631", "speaker": "AGENT", "bio": "calm."}),
                "{not json",
            ]
        )
        + "\n"
    )
    model = make_artifact(tmp_path / "bert")
    local, dask = label_both(
        tmp_path, cluster, [inputs[0], "--model", model, "--bios", str(bios), "--conversations-per-batch", "3"]
    )
    assert dask == local
    rows = [json.loads(r) for r in dask["utterances.jsonl"]]
    assert {(r["conversation_id"], r["speaker"], r["bio"]) for r in rows if r["bio"]} == {
        ("tca-billing-overcharge-2211", "CUSTOMER", "angry."),
        ("ccai-moving-house-6631", "AGENT", "calm."),
    }
    assert dask["counters"]["bio_rows_unreadable"] == 1 and dask["written"]["dead_letter_rows"] == 1


def test_bios_on_dask_match_the_in_process_runner(cluster, tmp_path):
    llm = tmp_path / "tiny-llama"
    tiny_llama(llm)
    outs = {}
    for name, extra in (("local", []), ("dask", on_dask(cluster, "--dask_partition_size", "1"))):
        out = tmp_path / name
        run = bios_pipeline.run(
            [
                str(DEMO),
                "-o",
                str(out),
                "--model",
                str(llm),
                "--max-new-tokens",
                "8",
                "--cache",
                "none",
                "--conversations-per-batch",
                "3",
                *extra,
            ]
        )
        outs[name] = {
            "bios": by_content(list(read_jsonl(str(out / "bios.jsonl")))),
            "dead": by_content(list(read_jsonl(str(out / "dead_letter.jsonl")))),
            "paper": json.loads((out / "bios.paper.json").read_text()),
            "counters": run.counters,
        }
    assert outs["dask"] == outs["local"] and outs["dask"]["bios"]
    c = outs["dask"]["counters"]
    pairs = sum(len(conv.speakers) for conv in read_items(str(DEMO)))
    assert c["conversations_read"] == len(outs["dask"]["paper"]) == 8
    assert (
        len(outs["dask"]["bios"]) + len(outs["dask"]["dead"])
        == pairs
        == c.get("bios_generated", 0) + c.get("bios_dead_lettered", 0)
    )


def test_a_row_lost_on_the_way_from_the_workers_is_caught(cluster, tmp_path):
    """The ledger the workers write is reconciled against the rows: a shard line gone is an accounting mismatch."""
    import apache_beam as beam

    out = tmp_path / "out"
    argv = [str(DEMO), "-o", str(out), "--model", DEFAULT_MODEL, "--report-calls", "0", *on_dask(cluster)]
    args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    pipeline = beam.Pipeline(options=runner.pipeline_options(beam_args))
    plan = label_pipeline.build(pipeline, args)
    runner.wait(plan.prepare.run())
    runner.wait(pipeline.run())
    shard = sorted(Path(plan.staging).glob("utterances-*"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[1:]))
    outcome = label_pipeline.finish(plan, args, argv, time.time())
    assert outcome.exit_code == 1 and outcome.where != str(out)
    assert outcome.problems == [
        "76 utterances were labelled but 75 rows were written",
        "archive.json counts 76 utterances but 75 rows were written",
    ]
    assert not (out / "utterances.jsonl").exists()


def test_workers_keep_no_step_outputs_of_finished_partitions(cluster, tmp_path):
    """Beam's Dask runner collects each step's outputs in a list among the task's arguments, and a worker keeps a
    finished task's arguments until the run's result is released: unless `release_dask_outputs` empties the lists,
    every call a worker labelled stays in its memory to the end (worker RSS grew with the archive). Checked after a
    run whose result is still held: Beam's receivers are still alive on the workers, and empty."""
    import gc

    import apache_beam as beam

    def held() -> tuple[int, int]:  # on a worker (nested, so sent by value): Beam's receivers, the outputs they hold
        receivers = [o for o in gc.get_objects() if type(o).__name__ == "OneReceiver"]
        return len(receivers), sum(len(r.values) for r in receivers)

    argv = [
        str(DEMO),
        "-o",
        str(tmp_path / "out"),
        "--model",
        DEFAULT_MODEL,
        "--no-bios",
        "--report-calls",
        "0",
        "--conversations-per-batch",
        "1",
        *on_dask(cluster),
    ]
    args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    pipeline = beam.Pipeline(options=runner.pipeline_options(beam_args))
    plan = label_pipeline.build(pipeline, args)
    runner.wait(plan.prepare.run())
    result = pipeline.run()
    try:
        result.wait_until_finish()
        with distributed.Client(cluster) as client:
            found = client.run(held)
    finally:
        result.client.close()
    assert sum(n for n, _ in found.values()) > 0, "no worker kept a finished task's arguments: nothing was checked"
    assert [outputs for _, outputs in found.values()] == [0, 0]
    outcome = label_pipeline.finish(plan, args, argv, time.time())
    assert outcome.problems == [] and outcome.counters["utterances_labeled"] == 76


def dask_tasks(pipeline) -> int:
    """Tasks in the graph Beam's Dask runner submits for `pipeline`, translated as `DaskRunner.run_pipeline` does."""
    import dask
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
    from apache_beam.runners.dask.overrides import dask_overrides

    options = pipeline.options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    pipeline.replace_all(dask_overrides())
    visitor = DaskRunner.to_dask_bag_visitor(DaskOptions._extract_bag_kwargs(options))
    pipeline.visit(visitor)
    (bag,) = dask.optimize(list(visitor.bags.values())[-1])
    return len(bag.__dask_graph__())


def test_the_grouping_pipeline_has_the_same_graph_for_any_archive_size(cluster, tmp_path):
    """On Dask the first pipeline's GroupByKey is a task shuffle of ~n·√n tasks for n partitions, each held by the
    scheduler and the workers: its partition count is fixed, so 4x the files give the same graph. The labelling
    pipeline's chain is fused into one task per partition (of 4 file groups): linear, and released as it runs."""
    import apache_beam as beam

    tasks = {}
    with distributed.Client(cluster):  # as in the runner: with a client connected dask shuffles a bag by tasks
        for files in (256, 1024):  # 32 partitions of the file groups for both
            folder = tmp_path / f"calls-{files}"
            folder.mkdir()
            for i in range(files):
                shutil.copy(DEMO / "ccai-moving-house-6631.json", folder / f"call-{i:04d}.json")
            argv = [
                str(folder),
                "-o",
                str(tmp_path / f"out-{files}"),
                "--model",
                DEFAULT_MODEL,
                "--no-bios",
                "--conversations-per-batch",
                "1",
                *on_dask(cluster),
            ]
            args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
            pipeline = beam.Pipeline(options=runner.pipeline_options(beam_args))
            plan = label_pipeline.build(pipeline, args)
            tasks[files] = dask_tasks(plan.prepare), dask_tasks(pipeline)
    assert tasks[1024][0] == tasks[256][0]
    assert tasks[1024][1] == 4 * tasks[256][1]
