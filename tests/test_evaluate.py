"""`bioserc evaluate`: the metrics (scikit-learn, checked by hand), the report a person reads, clean errors for bad
artifacts and data, and predictions that do not depend on the ONNX Runtime thread count.

    .venv/bin/python -m pytest -q tests/test_evaluate.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_bert_classifier import MELD, make_corpus, make_encoder, write_jsonl

from bioserc.artifacts import write_manifest
from bioserc.metrics import classification_report, render_report
from bioserc.models import BiosercBert, BiosercBertConfig
from bioserc.models.classifier import load_classifier
from bioserc.training.evaluate import evaluate, main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, str]:
    """A no-bio tiny classifier as training writes it (pytorch-classifier) and as an int8 ONNX export, plus data."""
    from bioserc.export.onnx_classifier import export_classifier

    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    model = BiosercBert.from_encoder(
        BiosercBertConfig(encoder=make_encoder(root / "encoder", layers=2), bio_mode="none", max_length=32, heads=2)
    )
    model.save_pretrained(str(root / "torch"))
    write_manifest(
        str(root / "torch"),
        "pytorch-classifier",
        model_family="bioserc-bert",
        label_set="meld",
        labels=list(MELD),
        window=2,
        bio_mode="none",
        metrics={},
    )
    export_classifier(str(root / "torch"), str(root / "int8"), quantize="weights")
    data = write_jsonl(root / "dev.jsonl", (c.to_dict() for c in make_corpus(12, seed=3)))
    return {"torch": str(root / "torch"), "int8": str(root / "int8"), "data": data, "root": str(root)}


def test_report_matches_hand_computed_scores():
    # gold a a b c, predicted a b b a over labels a b c d:
    # a: P 1/2 R 1/2 F1 1/2 (support 2); b: P 1/2 R 1 F1 2/3 (support 1); c: 0 (support 1); d: 0 (never occurs)
    report = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c", "d"])
    assert report["n"] == 4 and report["accuracy"] == pytest.approx(50.0)
    assert report["weighted_f1"] == pytest.approx(100 * (2 * 0.5 + 1 * 2 / 3) / 4)
    assert report["macro_f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0) / 3)  # d occurs nowhere: not averaged
    assert report["per_class"]["b"] == pytest.approx({"precision": 50.0, "recall": 100.0, "f1": 200 / 3, "support": 1})
    assert report["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    json.dumps(report)


def test_report_refuses_labels_outside_the_list_and_empty_input():
    with pytest.raises(ValueError, match=r"\['x'\] are not in the label list"):
        classification_report(["a", "x"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_report(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no labelled utterances"):
        classification_report([], [], ["a"])


def test_rendered_confusion_grid_has_gold_rows_and_predicted_columns():
    report = classification_report(["joy"] * 12 + ["anger"], ["anger"] * 12 + ["anger"], ["joy", "anger"])
    text = render_report(report)
    grid = text[text.index("confusion matrix") :].splitlines()
    assert grid[1].split() == ["gold", "\\", "predicted", "joy", "anger"]
    assert grid[2].split() == ["joy", "0", "12"] and grid[3].split() == ["anger", "0", "1"]
    assert len({len(line) for line in grid[1:]}) == 1  # aligned columns
    assert "weighted F1" in text and "macro F1" in text and "accuracy" in text
    assert any(line.split()[:2] == ["anger", "7.69"] for line in text.splitlines())  # precision 1/13


def test_cli_prints_tables_by_default_json_on_request(artifacts, capsys, tmp_path):
    assert main(["--model", artifacts["int8"], "--data", artifacts["data"]]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix (rows: gold, columns: predicted)" in text
    assert text.splitlines()[2].split() == ["class", "precision", "recall", "F1", "support"]
    output = tmp_path / "report.json"
    assert main(["--model", artifacts["int8"], "--data", artifacts["data"], "--json", "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text()) and printed["labels"] == list(MELD)
    assert f"weighted F1 {printed['weighted_f1']:.2f}".split() in [line.split() for line in text.splitlines()]


def _tampered(artifacts: dict[str, str], tmp_path: Path) -> str:
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(artifacts["int8"], folder)
    with open(folder / "head.onnx", "ab") as fh:
        fh.write(b"\0")
    return str(folder)


@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "no manifest",
        "tampered file",
        "reordered labels",
        "bad data",
        "missing data",
        "unlabelled data",
    ],
)
def test_bad_artifacts_and_data_are_one_error_line_and_exit_2(artifacts, tmp_path, capsys, case):
    model, data = artifacts["int8"], artifacts["data"]
    if case == "missing folder":
        model = str(tmp_path / "nowhere")
    elif case == "no manifest":
        (tmp_path / "config.json").write_text("{}")
        model = str(tmp_path)
    elif case == "tampered file":
        model = _tampered(artifacts, tmp_path)
    elif case == "reordered labels":
        import shutil

        model = str(tmp_path / "reordered")
        shutil.copytree(artifacts["torch"], model)
        manifest = json.loads((Path(model) / "manifest.json").read_text())
        manifest["labels"] = manifest["labels"][::-1]
        (Path(model) / "manifest.json").write_text(json.dumps(manifest))
    elif case == "bad data":
        data = str(tmp_path / "bad.json")
        Path(data).write_text("{not json")
    elif case == "missing data":
        data = str(tmp_path / "absent.jsonl")
    else:
        rows = [
            {**c.to_dict(), "utterances": [{**u, "label": None} for u in c.to_dict()["utterances"]]}
            for c in make_corpus(2)
        ]
        data = write_jsonl(tmp_path / "unlabelled.jsonl", rows)
    assert main(["--model", model, "--data", data]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err and captured.out == ""
    expected = {
        "missing folder": "does not exist",
        "no manifest": "no manifest.json",
        "tampered file": "head.onnx",
        "reordered labels": "order matters",
        "bad data": "bad.json",
        "missing data": "absent.jsonl",
        "unlabelled data": "has gold labels",
    }[case]
    assert expected in errors[0]


def test_pytorch_and_onnx_artifacts_are_verified_and_agree(artifacts):
    source, onnx = evaluate(artifacts["torch"], artifacts["data"]), evaluate(artifacts["int8"], artifacts["data"])
    assert source["n"] == onnx["n"] == sum(len(c.utterances) for c in make_corpus(12, seed=3))
    assert source["labels"] == onnx["labels"] == list(MELD)


def test_predictions_do_not_depend_on_the_thread_count(artifacts):
    """ONNX Runtime splits no reduction across threads (MLAS partitions rows/columns), so 1 and 2 intra-op threads
    give bit-identical probabilities, here with the int8 MatMulNBits kernels of the release format."""
    from bioserc.models.onnx_classifier import OnnxClassifier

    convs = make_corpus(20, seed=5)
    one, two = (
        OnnxClassifier(artifacts["int8"], provider="cpu", threads=n).predict(convs, None, batch_size=3) for n in (1, 2)
    )
    assert len(one) == sum(len(c.utterances) for c in convs)
    assert [p.probs for p in one] == [p.probs for p in two]


def test_threads_flag_reaches_the_runtime_and_leaves_the_report_unchanged(artifacts, capsys):
    reports = []
    for n in ("1", "2"):
        assert main(["--model", artifacts["int8"], "--data", artifacts["data"], "--threads", n, "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1] and reports[0]["n"] > 0
    onnx = load_classifier(artifacts["int8"], threads=2)
    assert onnx.encoder.get_session_options().intra_op_num_threads == 2
    before = torch.get_num_threads()
    try:
        load_classifier(artifacts["torch"], threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", artifacts["int8"], "--data", artifacts["data"], "--threads", "-1"])
    assert exit_info.value.code == 2 and "--threads must be 0 (automatic) or more" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu", "cuda1", "cuda:99"])
def test_a_bad_or_absent_torch_device_is_one_error_line(artifacts, capsys, device):
    """`bioserc.devices.resolve_device` checks the string (and that torch sees the GPU) before any weights load."""
    assert main(["--model", artifacts["torch"], "--data", artifacts["data"], "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: device {device!r}") and "Traceback" not in err


def test_llm_options_are_refused_for_a_bert_classifier(artifacts):
    with pytest.raises(ValueError, match=r"\['mode'\] apply to LLM artifacts only"):
        load_classifier(artifacts["torch"], mode="generate")
