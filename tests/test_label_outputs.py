"""`bioserc label` outputs: one writer per folder, nothing replaced by a failed run, exit codes, reconciliation.

Runs the real pipeline (in-process runner) with the committed default model on the demo transcripts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bioserc.pipelines import label_pipeline
from bioserc.pipelines.outputs import output_lock


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "transcripts"
MODEL = str(ROOT / "serving_artifacts" / "default")
DEMO_UTTERANCES = 76


def label(inputs: list[Path], out: Path, *extra: str) -> int:
    return label_pipeline.main([*map(str, inputs), "-o", str(out), "--model", MODEL, "--report-calls", "0", *extra])


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    (folder / "torn.json").write_text('{"JobStatus": "COMPLETED", "Transcript": [ {"Content": "hi"')
    (folder / "rows.jsonl").write_text(
        json.dumps({"conversation_id": "r", "speaker": "A", "text": "fine"})
        + "\n"
        + json.dumps({"conversation_id": "r", "speaker": "B", "text": 7})
        + "\n"
    )
    return folder


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "out"
    assert label([DEMO], out) == 0
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_clean_run_exits_0_and_says_what_it_did(good_run, capsys):
    assert len(lines(good_run / "utterances.jsonl")) == DEMO_UTTERANCES
    assert (good_run / "dead_letter.jsonl").read_text() == ""
    info = json.loads((good_run / "run.json").read_text())
    assert info["exit_code"] == 0 and info["problems"] == [] and info["written"]["utterance_rows"] == DEMO_UTTERANCES
    assert not [p for p in good_run.iterdir() if p.name.startswith((".staging-", "failed-"))]


def test_dead_letters_exit_1_unless_allowed(broken, tmp_path, capsys):
    assert label([DEMO, broken], tmp_path / "a") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"labelled {DEMO_UTTERANCES} utterances" in last and "--allow-skips" in last
    assert label([DEMO, broken], tmp_path / "b", "--allow-skips") == 0
    assert len(lines(tmp_path / "b" / "utterances.jsonl")) == DEMO_UTTERANCES
    assert {d["path"].rsplit("/", 1)[-1] for d in lines(tmp_path / "b" / "dead_letter.jsonl")} == {
        "torn.json",
        "rows.jsonl",
    }


def test_the_demo_report_opens_with_the_archive_and_its_review_links_resolve(good_run, tmp_path):
    """On the demo archive with the default model: `bioserc summarize` gives the label run's analytics byte for byte,
    and its report (the label run here skipped it: --report-calls 0) starts with the archive page, whose review list
    links to sections of the page."""
    from test_summarize import parse

    from bioserc import cli

    again = tmp_path / "again"
    shutil.copytree(good_run, again, ignore=shutil.ignore_patterns(".bioserc.lock"))
    assert cli.main(["summarize", str(again), "--report-calls", "2"]) == 0
    for name in ("conversations.jsonl", "calls.csv", "calls.parquet", "archive.json"):
        assert (again / name).read_bytes() == (good_run / name).read_bytes(), name
    archive = json.loads((again / "archive.json").read_text())
    assert archive["calls"] == 8 and sum(archive["labels"].values()) == DEMO_UTTERANCES and archive["review"]
    page = (again / "report.html").read_text()
    assert page.index('id="archive"') < page.index("Calls to review") < page.index('<h3 id="call-')
    anchors = parse(page)
    assert len(anchors.review) == len(archive["review"]) and set(anchors.review) <= anchors.ids


def test_a_run_that_labels_nothing_fails_and_keeps_the_previous_outputs(good_run, broken, capsys):
    before = {
        name: (good_run / name).read_bytes()
        for name in ("utterances.jsonl", "conversations.jsonl", "utterances.parquet", "run.json")
    }
    for extra in ((), ("--allow-skips",)):
        assert label([broken], good_run, *extra) == 1
        assert "nothing was labelled" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {name: (good_run / name).read_bytes() for name in before} == before
    kept = sorted(p for p in good_run.iterdir() if p.name.startswith("failed-"))
    assert kept and lines(kept[-1] / "dead_letter.jsonl")
    for folder in kept:  # leave the module's output as a clean run left it
        shutil.rmtree(folder)


def test_a_second_writer_is_refused_before_any_work(good_run, capsys):
    before = (good_run / "utterances.jsonl").read_bytes()
    with output_lock(str(good_run)):
        assert label([DEMO], good_run) == 2
    assert "in use by another bioserc run" in capsys.readouterr().err
    assert (good_run / "utterances.jsonl").read_bytes() == before


def test_an_unwritable_output_fails_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert label([DEMO], tmp_path / "file" / "out") == 2
    assert "not writable" in capsys.readouterr().err


def test_leftovers_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    for name in (".staging-20260101T000000-1", "beam-temp-utterances-abc"):
        (out / name).mkdir(parents=True)
        (out / name / "part").write_text("half a row")
    assert label([DEMO], out) == 0
    assert not [p for p in out.iterdir() if p.name.startswith((".staging-", "beam-temp-"))]


@pytest.mark.parametrize("loss", ["reader", "writer"])
def test_lost_utterances_are_an_error_not_a_smaller_output(good_run, monkeypatch, capsys, loss):
    from bioserc.pipelines import outputs

    if loss == "reader":  # the independent count finds an utterance the pipeline never read
        real = label_pipeline.count_inputs

        def more(args):
            count = real(args)
            count.utterances += 1
            return count

        monkeypatch.setattr(label_pipeline, "count_inputs", more)
    else:  # a sink drops one row
        real_write, dropped = outputs.JsonSink.write, []

        def lossy(self, record):
            if record[0] == outputs.UTTERANCES and not dropped:
                dropped.append(record)
                return
            real_write(self, record)

        monkeypatch.setattr(outputs.JsonSink, "write", lossy)
    before = (good_run / "utterances.jsonl").read_bytes()
    assert label([DEMO], good_run) == 1
    assert "accounting mismatch" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (good_run / "utterances.jsonl").read_bytes() == before
    for folder in good_run.glob("failed-*"):
        shutil.rmtree(folder)


def test_threads_reach_the_model(tmp_path, monkeypatch):
    from bioserc.pipelines import classifier_handler

    seen, real = [], classifier_handler.load_classifier

    def spy(path, device="cpu", threads=None, int8="auto"):
        seen.append(threads)
        return real(path, device, threads, int8)

    monkeypatch.setattr(classifier_handler, "load_classifier", spy)
    assert label([DEMO / "tca-billing-overcharge-2211.json"], tmp_path / "out", "--threads", "1") == 0
    assert seen == [1]
