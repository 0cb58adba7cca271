"""Strict command lines for `bioserc label` and `bioserc bios` (issue 14, items 2, 3, 6): a typo, an unknown format or
an unreadable URI scheme is a usage error (exit 2) before anything is read or written; Beam's flags pass through.

Usage errors never load a model, so these tests are fast; one real run labels tests/fixtures/transcripts with the
committed default model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bioserc import cli
from bioserc.pipelines import bios_pipeline, label_pipeline
from bioserc.pipelines.options import parse_pipeline_args


ROOT = Path(__file__).resolve().parents[1]
CALLS = ROOT / "tests" / "fixtures" / "transcripts"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package itself fails to import
        return False


def _gcs_available() -> bool:
    try:
        import apache_beam.io.gcp.gcsfilesystem  # noqa: F401
    except ImportError:
        return False
    return True


def usage_error(capsys, argv: list[str]) -> str:
    """Run `bioserc ARGV`, expect exit 2, return stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def previous_run(tmp_path):
    """An output folder holding an earlier run's results, which a refused command must leave alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "utterances.jsonl").write_text('{"conversation_id": "earlier", "label": "joy"}\n')
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_label_unknown_format_is_a_usage_error_and_keeps_outputs(capsys, previous_run):
    before = _snapshot(previous_run)
    err = usage_error(capsys, ["label", str(CALLS), "-o", str(previous_run), "--format", "azure", "--no-bios"])
    assert "argument --format: invalid choice: 'azure'" in err and "azure-stt" in err
    assert _snapshot(previous_run) == before


@pytest.mark.parametrize("command", ["label", "bios"])
def test_a_misspelt_flag_is_refused_with_a_suggestion(capsys, previous_run, command):
    before = _snapshot(previous_run)
    typo, meant = ("--skip-exising", "--skip-existing") if command == "label" else ("--sampel", "--sample")
    err = usage_error(capsys, [command, str(CALLS), "-o", str(previous_run), typo])
    assert err.strip().splitlines()[-1] == (
        f"bioserc {command}: error: unrecognized argument: {typo} (did you mean {meant}?)"
    )
    assert _snapshot(previous_run) == before


@pytest.mark.parametrize(
    "argv, wanted",
    [
        (["--skip"], "--skip-existing"),  # a prefix is not a flag (argparse would have taken it as --skip-existing)
        (["--temp-location", "/tmp/x"], "--temp_location"),  # Beam's flags are snake_case only
    ],
)
def test_prefixes_and_misspelt_beam_flags_are_refused(capsys, tmp_path, argv, wanted):
    err = usage_error(capsys, ["label", str(CALLS), "-o", str(tmp_path / "out"), *argv])
    assert f"(did you mean {wanted}?)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command, argv",
    [
        ("bios", ["--scope", "per-conversation"]),
        ("bios", ["--mode", "per-speaker"]),
        ("label", ["--bio-scope", "per-conversation"]),
        ("label", ["--bio_scope=per-conversation"]),
        ("label", ["--bio-mode", "per-speaker"]),
        ("label", ["--batch-size", "8"]),
    ],
)
def test_flags_removed_before_0_1_0_are_unknown(capsys, tmp_path, command, argv):
    """--scope/--mode (one prompt per conversation) and label's --batch-size (now --batch-utterances) are gone."""
    err = usage_error(capsys, [command, str(CALLS), "-o", str(tmp_path / "out"), *argv])
    assert "unrecognized argument" in err and argv[0].partition("=")[0] in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("parser", [label_pipeline.make_parser, bios_pipeline.make_parser])
def test_beam_and_runner_flags_pass_through_verbatim(parser, tmp_path):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    argv = [
        str(CALLS / "azure-fast-refund.json"),
        "--runner",
        "DirectRunner",
        "-o",
        str(tmp_path),
        "--direct_num_workers",
        "1",
        str(CALLS / "calls-export.csv"),
        "--direct_running_mode=in_memory",
        "--experiments",
        "a",
        "--experiments=b",
    ]
    args, beam_args = parse_pipeline_args(parser(), argv)
    assert args.inputs == [argv[0], argv[7]]  # a Beam flag's value is never taken for an input
    assert beam_args == [
        "--runner",
        "DirectRunner",
        "--direct_num_workers",
        "1",
        "--direct_running_mode",
        "in_memory",
        "--experiments",
        "a",
        "--experiments",
        "b",
    ]
    options = PipelineOptions(beam_args)
    assert options.view_as(DirectOptions).direct_num_workers == 1
    assert options.view_as(StandardOptions).runner == "DirectRunner"


@pytest.mark.skipif(not _has_module("dask.distributed"), reason="the Dask runner needs dask and distributed")
def test_dask_runner_flags_pass_through(tmp_path):
    argv = [
        str(CALLS),
        "-o",
        str(tmp_path),
        "--runner",
        "apache_beam.runners.dask.dask_runner.DaskRunner",
        "--dask_client_address",
        "127.0.0.1:8786",
    ]
    _, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    assert beam_args[-2:] == ["--dask_client_address", "127.0.0.1:8786"]


def test_a_runner_that_cannot_be_imported_is_a_usage_error(capsys, tmp_path):
    err = usage_error(
        capsys,
        [
            "label",
            str(CALLS),
            "-o",
            str(tmp_path / "out"),
            "--runner",
            "no_such_package.runner.NoRunner",
            "--no_such_flag",
            "h:1",
        ],
    )
    assert "--runner no_such_package.runner.NoRunner: cannot import it" in err


def test_snake_case_spellings_of_application_flags_are_accepted(tmp_path):
    argv = [
        str(CALLS),
        "-o",
        str(tmp_path),
        "--skip_existing",
        "--conversations_per_batch",
        "4",
        "--bio_words=30",
        "--speaker_roles",
        "1=agent",
        "--batch_utterances",
        "64",
    ]
    args, beam_args = parse_pipeline_args(label_pipeline.make_parser(), argv)
    assert (args.skip_existing, args.conversations_per_batch, args.bio_words) == (True, 4, 30)
    assert (args.speaker_roles, args.batch_utterances, beam_args) == ({"1": "agent"}, 64, [])
    args, _ = parse_pipeline_args(
        bios_pipeline.make_parser(), [str(CALLS), "-o", str(tmp_path), "--max_new_tokens", "8", "--batch_size", "4"]
    )
    assert (args.max_new_tokens, args.batch_size) == (8, 4)


def test_one_meaning_per_name_and_shared_defaults():
    label = label_pipeline.make_parser().parse_args([str(CALLS), "-o", "x"])
    bios = bios_pipeline.make_parser().parse_args([str(CALLS), "-o", "x"])
    assert label.conversations_per_batch == bios.conversations_per_batch == 16
    assert label.bio_batch_size == bios.batch_size  # prompts per generate call; label's --bio-X is bios' --X
    assert (label.batch_utterances, label.threads, label.max_file_mb) == (256, 0, 256)
    removed = ("bio_mode", "bio_scope", "mode", "scope")  # test_flags_removed_before_0_1_0_are_unknown
    assert not any(hasattr(args, name) for args in (label, bios) for name in removed)
    assert not hasattr(label, "batch_size")


@pytest.mark.parametrize(
    "flag, value", [("--threads", "-1"), ("--batch-utterances", "0"), ("--conversations-per-batch", "0")]
)
def test_impossible_numbers_are_usage_errors(capsys, tmp_path, flag, value):
    err = usage_error(capsys, ["label", str(CALLS), "-o", str(tmp_path / "out"), flag, value])
    assert f"argument {flag}" in err and "must be at least" in err


@pytest.mark.skipif(_gcs_available(), reason="Beam's GCS filesystem is installed here: gs:// is readable")
@pytest.mark.parametrize("command, where", [("label", "input"), ("label", "model"), ("bios", "output")])
def test_gs_paths_without_the_gcp_extra_get_a_one_line_hint(capsys, tmp_path, command, where):
    argv = [
        command,
        "gs://bucket/calls/*.json" if where == "input" else str(CALLS),
        "-o",
        "gs://bucket/out" if where == "output" else str(tmp_path / "out"),
    ]
    if where == "model":
        argv += ["--model", "gs://bucket/models/default"]
    err = usage_error(capsys, argv)
    last = err.strip().splitlines()[-1]
    assert last.endswith(":// is not readable with this install: pip install 'bioserc[gcp]'"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the usage line, then the error
    assert not (tmp_path / "out").exists()


def _help(*args: str) -> subprocess.CompletedProcess:
    """`--help` in a fresh process; the timeout allows for a loaded machine, where a niced import can take
    minutes."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bioserc.cli", *args, "--help"], capture_output=True, text=True, timeout=600, env=env
    )


def _flag_entries(text: str) -> dict[str, str]:
    """'--flag' -> its help entry, from argparse's help layout (an entry starts with '  -', continues indented)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_top_level_help_prints_no_beam_import_warning():
    done = _help()
    assert done.returncode == 0 and "label" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("command, required", [("label", {"-h", "-o"}), ("bios", {"-h", "-o"})])
def test_pipeline_help_shows_every_default_and_the_beam_passthrough(command, required):
    done = _help(command)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "apitools not found" (or any other) warning
    entries = _flag_entries(done.stdout)
    assert "--conversations-per-batch" in entries and "--format" in entries
    missing = [flag for flag, text in entries.items() if flag not in required and "default" not in text]
    assert not missing
    assert "--direct_num_workers" in done.stdout and "snake_case" in done.stdout
    assert "setup.py" not in done.stdout  # no example that names a file the repository does not have


def test_label_runs_with_snake_case_and_beam_flags(tmp_path, caplog):
    """The real command: default model, fixtures, Beam flag and snake_case spellings all taken, no Beam warning."""
    out = tmp_path / "out"
    argv = [
        "label",
        str(CALLS),
        "-o",
        str(out),
        "--no_bios",
        "--report_calls",
        "0",
        "--direct_num_workers",
        "1",
        "--conversations_per_batch",
        "4",
    ]
    assert cli.main(argv) == 0
    assert "Discarding unparseable args" not in caplog.text
    run = json.loads((out / "run.json").read_text())
    assert run["counters"]["utterances_labeled"] > 0 and (out / "utterances.jsonl").stat().st_size > 0
