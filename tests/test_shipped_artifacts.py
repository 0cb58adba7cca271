"""Shipped classifiers (serving_artifacts/NAME/) are addressable by name: `--model NAME` of `bioserc label` and
`bioserc evaluate` picks the folder, a local folder of that name wins, an unknown name fails as any missing folder,
and `bioserc models list` shows one row per shipped classifier with its checksum status.

A temporary folder stands in for the installed serving_artifacts, holding copies of the committed default (the real
folder is never modified).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bioserc import artifacts
from bioserc.artifacts import DEFAULT_MODEL_ENV, manifest_id, read_manifest, resolve_model_arg, shipped_models
from bioserc.cli import main
from bioserc.readers import read_conversations


ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "serving_artifacts" / "default"
CALLS = ROOT / "examples" / "transcripts"


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """serving_artifacts stand-in: `default` and `other` (the default re-manifested, so its model_id differs), a
    folder without a manifest and a README; the working directory is an empty folder."""
    root = tmp_path / "shipped"
    shutil.copytree(DEFAULT, root / "default")
    other = root / "other"
    shutil.copytree(DEFAULT, other)
    manifest = read_manifest(str(other))
    fields = {k: v for k, v in manifest.items() if k not in ("manifest_version", "kind", "created", "files")}
    artifacts.write_manifest(str(other), manifest["kind"], **{**fields, "source_checkpoint": "a test copy"})
    (root / "notes").mkdir()  # no manifest: not a classifier
    (root / "README.md").write_text("what is shipped\n")
    monkeypatch.setattr(artifacts, "shipped_root", lambda: root)
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return root


def test_shipped_names_default_first_then_sorted(shipped):
    (shipped / "aaa").mkdir()
    shutil.copy(DEFAULT / "manifest.json", shipped / "aaa")
    assert shipped_models() == {
        "default": str(shipped / "default"),
        "aaa": str(shipped / "aaa"),
        "other": str(shipped / "other"),
    }
    assert list(shipped_models()) == ["default", "aaa", "other"]
    assert artifacts.default_model_dir() == str(shipped / "default")


def test_an_alias_names_a_shipped_folder_only_while_it_is_there(shipped, monkeypatch):
    monkeypatch.setattr(artifacts, "SHIPPED_ALIASES", {"fast": "other", "gone": "nosuch", "other": "default"})
    models = shipped_models()
    assert models["fast"] == str(shipped / "other") and "gone" not in models
    assert models["other"] == str(shipped / "other")  # a real folder is never shadowed by an alias of that name
    assert list(models)[-1] == "fast" and resolve_model_arg("fast") == str(shipped / "other")
    assert artifacts.shipped_names() == "default, other, fast (= other)"
    Path("fast").mkdir()
    assert resolve_model_arg("fast") == "fast"  # a local folder still wins


def test_a_local_folder_wins_and_anything_else_is_unchanged(shipped):
    assert resolve_model_arg("other") == str(shipped / "other")
    assert resolve_model_arg("nosuch") == "nosuch"
    assert resolve_model_arg("gs://bucket/other") == "gs://bucket/other"
    Path("other").mkdir()
    assert resolve_model_arg("other") == "other"


def test_label_and_evaluate_parse_a_shipped_name(shipped):
    from bioserc.pipelines.label_pipeline import make_parser
    from bioserc.pipelines.options import parse_pipeline_args
    from bioserc.training import evaluate

    def label_model(*model: str) -> str:
        return parse_pipeline_args(make_parser(), [str(CALLS), "-o", "out", *model])[0].model

    def evaluate_model(model: str) -> str:
        return evaluate.make_parser().parse_args(["--model", model, "--data", "x.json"]).model_dir

    assert label_model() == str(shipped / "default")
    assert label_model("--model", "other") == evaluate_model("other") == str(shipped / "other")
    assert label_model("--model", "default") == evaluate_model("default") == str(shipped / "default")
    Path("other").mkdir()  # a local folder named like a shipped classifier wins
    assert label_model("--model", "other") == evaluate_model("other") == "other"
    for text in (make_parser().format_help(), evaluate.make_parser().format_help()):
        assert "shipped with bioserc (default, other;" in " ".join(text.split())


def test_label_with_a_shipped_name_uses_that_folder(shipped, tmp_path):
    out = tmp_path / "out"
    argv = [
        "label",
        str(CALLS),
        "-o",
        str(out),
        "--model",
        "other",
        "--report-calls",
        "0",
        "--direct_num_workers",
        "1",
    ]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == str(shipped / "other")
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(c.utterances) for c in read_conversations(str(CALLS)))
    labels = read_manifest(str(shipped / "other"))["labels"]
    assert {r["model_id"] for r in rows} == {manifest_id(str(shipped / "other"))} != {manifest_id(str(DEFAULT))}
    assert all(r["label"] in labels for r in rows)


def test_an_unknown_name_fails_as_a_missing_folder(shipped, tmp_path, capsys):
    from bioserc.artifacts import missing_model_help

    assert main(["label", str(CALLS), "-o", str(tmp_path / "out"), "--model", "nosuch"]) == 2
    assert f"error: {missing_model_help('nosuch')}" in capsys.readouterr().err
    assert main(["evaluate", "--model", "nosuch", "--data", str(CALLS)]) == 2
    assert "error: model artifact 'nosuch' does not exist" in capsys.readouterr().err


def test_models_list_shows_every_shipped_classifier(shipped, tmp_path, capsys):
    def rows() -> dict[str, dict]:
        assert main(["models", "list", "--json"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["name"] for r in listed][:2] == ["default", "other"] and "notes" not in {r["name"] for r in listed}
        return {r["name"]: r for r in listed}

    listed = rows()
    for name in ("default", "other"):
        row = listed[name]
        assert row["status"] == "verified" and row["path"] == str(shipped / name) and "problem" not in row
        assert row["kind"] == "onnx-classifier" and row["label_set"] == "meld"
        assert row["package"].startswith("bioserc==") and row["weighted_f1"] > 50

    labels = shipped / "other" / "labels.txt"
    labels.write_text(labels.read_text().replace("joy", "JOY"))
    listed = rows()
    assert listed["default"]["status"] == "verified" and listed["other"]["status"] == "MODIFIED"
    assert "'labels.txt' does not match its sha256" in listed["other"]["problem"]

    override = tmp_path / "mine"  # $BIOSERC_DEFAULT_MODEL overrides the default row only
    shutil.copytree(DEFAULT, override)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DEFAULT_MODEL_ENV, str(override))
        listed = rows()
    assert listed["default"]["path"] == str(override) and listed["default"]["package"] == f"${DEFAULT_MODEL_ENV}"
    assert listed["other"]["path"] == str(shipped / "other") and listed["other"]["package"].startswith("bioserc==")
