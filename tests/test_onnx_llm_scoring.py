"""LLM label scoring on ONNX Runtime: an `onnx-llm` export (`bioserc export onnx-llm`) loaded by `load_classifier`
scores like the PyTorch `LlmClassifier` of the merged folder, `bioserc evaluate` runs on it, and the export checks
ORT-vs-PyTorch parity by default (a mismatch fails it and promotes nothing). The tiny random Llama of tiny_llm.py;
nothing is downloaded.

    .venv/bin/python -m pytest -q tests/test_onnx_llm_scoring.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_llm import tiny_llama

from bioserc.artifacts import ArtifactError, manifest_id, read_manifest, verify_artifact, write_manifest
from bioserc.export.cli import main as export_main
from bioserc.export.onnx_llm import PARITY_TOLERANCE, export_llm
from bioserc.labels import LABEL_SETS
from bioserc.models.classifier import load_classifier
from bioserc.models.llm_encoding import utterance_bio
from bioserc.prompts.erc_llm import ERC_PROMPT_VERSION, ErcPromptConfig
from bioserc.schema import Conversation, Utterance
from bioserc.training.evaluate import evaluate
from bioserc.training.evaluate import main as evaluate_main


pytest.importorskip("optimum.onnxruntime")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MELD = list(LABEL_SETS["meld"].labels)
TEXTS = ["hello there", "how are you?", "Bob sounds tired.", "They argue about the rent.", "Ann is cheerful."]


def conversations() -> list[Conversation]:
    """Two labelled conversations of 3 and 4 turns, two speakers each (prompts of different lengths)."""
    return [
        Conversation(
            f"c{n}",
            [
                Utterance(i, f"SPEAKER_{(i + n) % 2}", TEXTS[(i + n) % 5], label=MELD[(3 * i + n) % 7])
                for i in range(3 + n)
            ],
            {"label_set": "meld"},
        )
        for n in range(2)
    ]


def speaker_bios(convs: list[Conversation]) -> dict[tuple[str, str], str]:
    return {(c.id, s): f"{s} talks fast." for c in convs for s in c.speakers}


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> str:
    """The tiny Llama with the hf-llm manifest `bioserc merge` writes for an emotion classifier."""
    directory = tmp_path_factory.mktemp("onnx-llm") / "merged"
    directory.mkdir()
    tiny_llama(directory)
    write_manifest(
        str(directory),
        "hf-llm",
        model_family="bioserc-llm",
        label_set="meld",
        labels=MELD,
        prompt_version=ERC_PROMPT_VERSION,
        prompt=ErcPromptConfig(window=1).to_dict(),
        chat_template="auto",
        base_model="tiny",
        dtype="float32",
        step=6,
    )
    return str(directory)


@pytest.fixture(scope="module")
def exported(merged) -> str:
    out = Path(merged).parent / "onnx"
    export_llm(merged, str(out))
    return str(out)


def test_export_carries_the_classifier_and_records_its_parity(merged, exported):
    manifest = verify_artifact(exported, "onnx-llm")
    source = read_manifest(merged)
    for field in ("labels", "label_set", "prompt_version", "prompt", "chat_template", "step"):
        assert manifest[field] == source[field], field
    assert manifest["bio_mode"] == "prompt" and manifest["source_checkpoint"] == manifest_id(merged)
    parity = manifest["parity"]
    assert parity["checked"] and parity["tolerance"] == PARITY_TOLERANCE == 1e-3
    assert 0 <= parity["max_abs_diff"] <= 1e-4 and (parity["prompts"], parity["answers"]) == (4, 7)


def test_onnx_runtime_scores_labels_like_pytorch(merged, exported):
    from bioserc.models.onnx_llm_scoring import OnnxLlmClassifier

    reference = load_classifier(merged)
    onnx = load_classifier(exported, threads=1, scoring="mean")
    assert isinstance(onnx, OnnxLlmClassifier) and onnx.model_id == manifest_id(exported)
    assert (onnx.labels, onnx.bio_mode, onnx.scoring) == (MELD, "prompt", "mean")
    assert onnx.encoder.answers == reference.encoder.answers
    assert len(set(map(len, onnx.encoder.answers))) > 1  # answers of different lengths: right padding is exercised
    convs, bios = conversations(), speaker_bios(conversations())
    prompts = [
        reference.encoder.prompt_ids(c, i, utterance_bio(bios, c, i)) for c in convs for i in range(len(c.utterances))
    ]
    assert len(set(map(len, prompts))) > 1  # left padding too
    for scoring in ("sum", "mean"):
        reference.scoring = onnx.scoring = scoring
        expected = reference.scores(prompts)
        torch.testing.assert_close(onnx.scores(prompts), expected, atol=1e-4, rtol=0)
        assert expected.std() > 0.1  # the scores tell labels apart, so agreeing means something
        ours, theirs = onnx.predict(convs, bios, batch_size=3), reference.predict(convs, bios, batch_size=3)
        assert [(p.conversation_id, p.index, p.label) for p in ours] == [
            (p.conversation_id, p.index, p.label) for p in theirs
        ]
        torch.testing.assert_close(
            torch.tensor([p.probs for p in ours]), torch.tensor([p.probs for p in theirs]), atol=1e-4, rtol=0
        )
    reference.mode = onnx.mode = "generate"
    assert [g.text for g in onnx.generate(convs[:1], bios)] == [g.text for g in reference.generate(convs[:1], bios)]


def test_evaluate_scores_an_onnx_llm_export(merged, exported, tmp_path, capsys):
    convs = conversations()
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in convs))
    bios = tmp_path / "bios.jsonl"
    bios.write_text(
        "".join(
            json.dumps({"conversation_id": c, "speaker": s, "bio": b}) + "\n"
            for (c, s), b in speaker_bios(convs).items()
        )
    )
    report = evaluate(exported, str(data), str(bios), threads=1)
    assert report["n"] == 7 and report["scoring"] == "sum"
    reference = evaluate(merged, str(data), str(bios))
    assert (report["confusion"], report["weighted_f1"]) == (reference["confusion"], reference["weighted_f1"])
    assert (
        evaluate_main(
            [
                "--model",
                exported,
                "--data",
                str(data),
                "--bios",
                str(bios),
                "--scoring",
                "mean",
                "--threads",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["scoring"] == "mean" and out["n"] == 7
    with pytest.raises(ValueError, match=r"\['base_model'\] apply to PyTorch LLM artifacts only"):
        load_classifier(exported, base_model=merged)


def test_an_altered_export_is_refused_before_loading(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    (copy / "generation_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="generation_config.json.*does not match its sha256"):
        load_classifier(str(copy))


def test_export_fails_and_promotes_nothing_when_onnx_runtime_disagrees(
    merged, exported, tmp_path, monkeypatch, capsys
):
    from bioserc.models import onnx_llm_scoring

    real = onnx_llm_scoring.ort_label_loglik
    monkeypatch.setattr(onnx_llm_scoring, "ort_label_loglik", lambda *args, **kw: real(*args, **kw) + 0.01)
    out = tmp_path / "onnx"
    shutil.copytree(exported, out)  # an earlier export, which a failed one must leave as it was
    before = (out / "manifest.json").read_text()
    with pytest.raises(RuntimeError, match=r"does not match PyTorch: .*differ by up to 0\.01 \(tolerance 0\.001\)"):
        export_llm(merged, str(out))
    assert (out / "manifest.json").read_text() == before and [p.name for p in tmp_path.iterdir()] == ["onnx"]
    assert export_main(["onnx-llm", "--model", merged, "-o", str(out), "--no-parity"]) == 0
    assert "checked: False" in capsys.readouterr().out
    assert verify_artifact(str(out), "onnx-llm")["parity"] == {"checked": False}


def test_label_runs_on_an_onnx_llm_export(merged, exported, tmp_path):
    """`bioserc label DIR -o OUT --model <onnx-llm export>` on the demo transcripts: every utterance labelled with one
    of the model's labels, the same labels as the PyTorch merged model gives through the same pipeline."""
    from bioserc.jsonio import read_jsonl
    from bioserc.pipelines import label_pipeline

    demo = str(Path(__file__).parent.parent / "examples" / "transcripts")
    rows = {}
    for name, model in (("onnx", exported), ("torch", merged)):
        out = tmp_path / name
        outcome = label_pipeline.run(
            [
                demo,
                "-o",
                str(out),
                "--model",
                model,
                "--no-bios",
                "--batch-utterances",
                "8",
                "--scoring",
                "mean",
                "--threads",
                "1",
            ]
        )
        assert outcome.exit_code == 0, outcome.message
        rows[name] = [
            (r["conversation_id"], r["index"], r["label"]) for r in read_jsonl(str(out / "utterances.jsonl"))
        ]
    assert len(rows["onnx"]) == 76 and {label for *_, label in rows["onnx"]} <= set(MELD)
    assert rows["onnx"] == rows["torch"]
    with pytest.raises(ArtifactError, match="LLM models only"):
        label_pipeline.run([demo, "-o", str(tmp_path / "bert"), "--scoring", "mean"])
