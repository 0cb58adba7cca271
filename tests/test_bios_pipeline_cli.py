"""`bioserc bios` as a command (issue 12, items 3 and 4): exit codes, the one-writer lock on -o and the summary line
as `bioserc label` has them, and `--threads` reaching the local LLM backends. The LLM is the scripted backend of
test_bios (`make_backend` patched), so these runs take seconds."""

from __future__ import annotations

import pytest
from test_bios import ScriptedBackend, conv

from bioserc import cli
from bioserc.jsonio import read_jsonl
from bioserc.pipelines import label_pipeline
from bioserc.pipelines.bios_pipeline import make_parser
from bioserc.pipelines.options import backend_options
from bioserc.pipelines.outputs import output_lock


CALLS = [
    conv("c1", [("ANN", "Hi, is the shop open?"), ("BOB", "Yes, until six.")]),
    conv("c2", [("CARL", "Hello there, my parcel is late."), ("DORA", "Let me check.")]),
]


@pytest.fixture
def bios_cli(tmp_path, monkeypatch, capsys):
    """Runs `bioserc bios CALLS -o tmp/out FLAGS` with a backend failing on prompts holding `fail_on`: (exit code,
    stderr lines, output folder)."""
    from bioserc.bios import backends

    def run(*flags: str, fail_on: str | None = None, bad_record: bool = False):
        monkeypatch.setattr(backends, "make_backend", lambda kind, model, **kw: ScriptedBackend(fail_on=fail_on))
        src = tmp_path / "calls.jsonl"
        src.write_text("".join(c.to_json() + "\n" for c in CALLS) + ("{not json\n" if bad_record else ""))
        out = tmp_path / "out"
        code = cli.main(["bios", str(src), "-o", str(out), "--model", "unused", "--cache", "none", *flags])
        return code, capsys.readouterr().err.strip().splitlines(), out

    return run


def test_every_bio_written_exits_0_with_a_counts_line(bios_cli):
    code, err, out = bios_cli()
    assert code == 0
    assert err[-1] == "wrote 4 bios (0 from the cache) for 2 calls; dead-lettered 0 bios and 0 input records"
    assert len(list(read_jsonl(str(out / "bios.jsonl")))) == 4


@pytest.mark.parametrize(
    "fail_on, bad_record, summary",
    [
        (
            "Hello there",
            False,
            "wrote 2 bios (0 from the cache) for 2 calls; dead-lettered 2 bios and 0 input records",
        ),
        (None, True, "wrote 4 bios (0 from the cache) for 2 calls; dead-lettered 0 bios and 1 input records"),
    ],
)
def test_dead_letters_exit_1_unless_skips_are_allowed(bios_cli, fail_on, bad_record, summary):
    code, err, out = bios_cli(fail_on=fail_on, bad_record=bad_record)
    assert code == 1
    assert err[-1] == summary + (
        "; exit 1 because records were dead-lettered (see dead_letter.jsonl; --allow-skips accepts that)"
    )
    assert len(list(read_jsonl(str(out / "dead_letter.jsonl")))) == (2 if fail_on else 1)
    code, err, _ = bios_cli("--allow-skips", fail_on=fail_on, bad_record=bad_record)
    assert (code, err[-1]) == (0, summary)


def test_no_bio_exits_1_even_with_allow_skips_and_keeps_the_previous_bios(bios_cli, tmp_path):
    assert bios_cli()[0] == 0
    previous = (tmp_path / "out" / "bios.jsonl").read_text()
    code, err, out = bios_cli("--allow-skips", fail_on=" ")  # in every prompt: every bio fails
    assert code == 1
    assert err[-1] == (
        "error: no bio was produced (wrote 0 bios (0 from the cache) for 2 calls; dead-lettered 4 "
        "bios and 0 input records)"
    )
    assert (out / "bios.jsonl").read_text() == previous
    [failed] = out.glob("failed-*")
    assert len(list(read_jsonl(str(failed / "dead_letter.jsonl")))) == 4
    assert "the previous outputs are unchanged" in err[-2]


def test_a_second_run_on_a_locked_output_exits_2_and_touches_nothing(bios_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bios.jsonl").write_text('{"conversation_id": "earlier"}\n')
    with output_lock(str(out)):  # another `bioserc bios` or `bioserc label` writing to -o
        code, err, _ = bios_cli()
        assert sorted(p.name for p in out.iterdir()) == [".bioserc.lock", "bios.jsonl"]
    assert code == 2
    assert err[-1].startswith(f"error: output folder {str(out)!r} is in use by another bioserc run (pid ")
    assert (out / "bios.jsonl").read_text() == '{"conversation_id": "earlier"}\n'


@pytest.mark.parametrize(
    "kind, flags, threads",
    [
        ("transformers", ["--threads", "3"], 3),
        ("onnx", ["--threads", "2"], 2),
        ("transformers", [], None),
    ],
)
def test_threads_reach_the_local_llm_backends(kind, flags, threads):
    args = make_parser().parse_args(["calls.jsonl", "-o", "out", "--backend", kind, *flags])
    assert backend_options(args) == {"batch_size": 32, "threads": threads}


@pytest.mark.parametrize("kind, flags", [("openai", ["--base-url", "http://127.0.0.1:9"]), ("trtllm", [])])
def test_threads_are_not_passed_to_servers_or_tensorrt_llm(kind, flags):
    args = make_parser().parse_args(["calls.jsonl", "-o", "out", "--backend", kind, "--threads", "3", *flags])
    assert "threads" not in backend_options(args)


def test_label_bio_threads_is_bios_threads():
    """`bioserc label` has --threads for the classifier; the LLM's are --bio-threads, through the same options."""
    args = label_pipeline.make_parser().parse_args(
        ["calls.jsonl", "-o", "out", "--threads", "1", "--bio-backend", "onnx", "--bio-threads", "4"]
    )
    assert (args.threads, backend_options(args, "bio_")) == (1, {"batch_size": 32, "threads": 4})
