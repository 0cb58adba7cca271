"""Speaker-profile models end to end: the ONNX export of a scores/latent BiosERC-BERT (its head takes the vectors) and
`bioserc label` with such a model, its profiles read from a --bios file or made in the pipeline by a tiny Llama.
Tiny random models written here; nothing is downloaded.

    .venv/bin/python -m pytest -q tests/test_profile_pipeline.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bert_classifier import make_encoder, write_jsonl
from test_profile_classifier import vector_rows
from test_profiles import CALLS, LABELS
from tiny_llm import tiny_llama

from bioserc.artifacts import profile_of, verify_artifact, write_manifest
from bioserc.errors import RecordError
from bioserc.jsonio import read_jsonl
from bioserc.models import BiosercBert, BiosercBertConfig, Collator, load_bios
from bioserc.models.classifier import load_classifier
from bioserc.models.predict import predict
from bioserc.schema import Conversation, Utterance


pytest.importorskip("onnxruntime")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Exporting aten..index:UserWarning"),
]

LATENT_DIM = 64  # the tiny Llama's hidden size
# A call whose profiles the LLM fails to make (`flaky_llm`)
FAILS = Conversation("fails", [Utterance(0, "Zed", "xyzzy, hello there"), Utterance(1, "Amy", "hello there")])
CONVS = [*CALLS, FAILS]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A scores (mlp) and a latent (attn) profile model with a manifest like training's, each exported to ONNX."""
    from bioserc.export.onnx_classifier import export_classifier

    root = tmp_path_factory.mktemp("profile-models")
    encoder = make_encoder(root / "encoder", layers=1)
    out = {}
    for profile, dim, bio_mode in (("scores", len(LABELS), "mlp"), ("latent", LATENT_DIM, "attn")):
        torch.manual_seed(0)
        model = BiosercBert.from_encoder(
            BiosercBertConfig(
                encoder=encoder,
                labels=list(LABELS),
                bio_mode=bio_mode,
                profile=profile,
                profile_dim=dim,
                max_length=48,
                heads=2,
            )
        )
        out[profile], out[f"{profile}_onnx"] = str(root / profile), str(root / f"{profile}-onnx")
        model.save_pretrained(out[profile])
        write_manifest(
            out[profile],
            "pytorch-classifier",
            model_family="bioserc-bert",
            label_set="meld",
            labels=list(LABELS),
            window=2,
            bio_mode=bio_mode,
            profile=profile,
            profile_dim=dim,
        )
        out[f"{profile}_manifest"] = export_classifier(out[profile], out[f"{profile}_onnx"])
    calls = root / "calls.jsonl"
    calls.write_text("".join(c.to_json() + "\n" for c in CONVS))
    out["calls"] = str(calls)
    return out


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny") / "llm"
    tiny_llama(folder)
    return str(folder)


@pytest.fixture
def flaky_llm(monkeypatch):
    """The transformers backend fails every prefill batch holding the FAILS call (the pipeline then retries each
    call alone, so only its speakers' profiles fail)."""
    from bioserc.bios.transformers_backend import TransformersBackend

    real = TransformersBackend.prefill_last

    def prefill_last(self, batch, hidden=False):
        if any("xyzzy" in m["content"] for messages in batch for m in messages):
            raise RuntimeError("prefill exploded")
        return real(self, batch, hidden)

    monkeypatch.setattr(TransformersBackend, "prefill_last", prefill_last)


def profile_file(path: Path, profile: str, dim: int) -> str:
    """bios.jsonl rows of `profile` for every speaker of CONVS but one (who is then fed zeros)."""
    return write_jsonl(
        path, [r for r in vector_rows(CONVS, profile, dim) if (r["conversation_id"], r["speaker"]) != ("c1", "Carol")]
    )


def label(models: dict, out: Path, model: str, *extra: str):
    from bioserc.pipelines import label_pipeline

    return label_pipeline.run(
        [models["calls"], "-o", str(out), "--model", models[model], "--report-calls", "0", *extra]
    )


def rows_in_order(out: Path, predictions) -> list[dict]:
    """The run's utterance rows in the order of `predictions` (every utterance labelled exactly once)."""
    rows = {(r["conversation_id"], r["index"]): r for r in read_jsonl(str(out / "utterances.jsonl"))}
    assert len(rows) == len(predictions) == sum(len(c.utterances) for c in CONVS)
    return [rows[p.conversation_id, p.index] for p in predictions]


def probs(rows: list[dict]) -> np.ndarray:
    return np.array([[r["probs"][name] for name in LABELS] for r in rows])


@pytest.mark.parametrize(("profile", "dim"), [("scores", len(LABELS)), ("latent", LATENT_DIM)])
def test_export_feeds_the_vectors_to_the_head_and_matches_pytorch(models, tmp_path, profile, dim):
    import onnx

    from bioserc.models.onnx_classifier import OnnxClassifier

    onnx_dir, manifest = models[f"{profile}_onnx"], models[f"{profile}_manifest"]
    assert profile_of(verify_artifact(onnx_dir, "onnx-classifier")) == (profile, dim)
    assert {"fp32_head_max_abs_diff", "fp32_logits_max_abs_diff"} <= set(manifest["parity"])
    assert max(manifest["parity"].values()) <= 1e-4
    inputs = {i.name: i for i in onnx.load(str(Path(onnx_dir) / "head.onnx")).graph.input}
    assert "speaker_bios" not in inputs and inputs["speaker_profiles"].type.tensor_type.shape.dim[2].dim_value == dim

    model = BiosercBert.from_pretrained(models[profile]).eval()
    collator, runtime = Collator(model.tokenizer, model.config), OnnxClassifier(onnx_dir, provider="cpu", threads=1)
    bios = load_bios(profile_file(tmp_path / "bios.jsonl", profile, dim), profile, dim)
    batch = collator(CONVS, bios)  # shapes the export did not check: 3 calls, a speaker without a vector
    with torch.no_grad():
        expected = model(**batch.inputs)
    got = torch.from_numpy(runtime.logits(batch.inputs))
    mask = batch.inputs["utt_mask"]
    assert float((got - expected)[mask].abs().max()) <= 1e-4
    zeros = torch.from_numpy(runtime.logits(collator(CONVS, {}).inputs))
    assert float((zeros - got)[mask].abs().max()) > 1e-3  # the vectors reach the logits


def test_label_reads_profiles_from_a_file_like_evaluate_for_the_folder_and_its_export(models, tmp_path):
    bios = profile_file(tmp_path / "latent.jsonl", "latent", LATENT_DIM)
    profiles = load_bios(bios, "latent", LATENT_DIM)  # what `bioserc evaluate --bios` feeds the model
    expected = load_classifier(models["latent"]).predict(CONVS, profiles)
    without = predict(BiosercBert.from_pretrained(models["latent"]), CONVS, {})
    for name in ("latent", "latent_onnx"):
        outcome = label(models, tmp_path / name, name, "--bios", bios)
        rows = rows_in_order(tmp_path / name, expected)
        assert outcome.exit_code == 0 and not list(read_jsonl(str(tmp_path / name / "dead_letter.jsonl")))
        assert [r["label"] for r in rows] == [p.label for p in expected]
        assert np.allclose(probs(rows), [p.probs for p in expected], atol=1e-5)
        assert not np.allclose(probs(rows), [p.probs for p in without], atol=1e-3)
        assert all(r["bio"] is None for r in rows)  # a vector is no text to show
        assert outcome.counters["speakers_without_bio"] == 1
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert run["bios"] == "file" and run["exit_code"] == 0


def made_here(llm: str, cache: Path, profile: str, labels) -> dict:
    """The profiles `bioserc bios --profile P` makes: read from the label run's cache, so all must be hits."""
    from bioserc.bios.backends import make_backend
    from bioserc.bios.cache import BioCache
    from bioserc.bios.extract import BioExtractor

    extractor = BioExtractor(
        make_backend("transformers", llm), profile=profile, labels=labels, cache=BioCache(str(cache))
    )
    made = [r for r in extractor.run(CONVS) if not r.error]
    assert len(made) == 5 and all(r.cached for r in made)
    return {(r.conversation_id, r.speaker): r.vector for r in made}


def test_label_makes_scores_profiles_with_the_model_labels_and_caches_them(models, llm, flaky_llm, tmp_path):
    cache = tmp_path / "cache"
    generate = ("--bio-model", llm, "--bio-cache", str(cache), "--allow-skips")
    first = label(models, tmp_path / "torch", "scores", *generate)
    c = first.counters
    assert first.exit_code == 0 and (c["bios_generated"], c["bios_dead_lettered"]) == (5, 2)
    assert c["utterances_labeled"] == c["utterances_read"] == sum(len(conv.utterances) for conv in CONVS)
    dead = list(read_jsonl(str(tmp_path / "torch" / "dead_letter.jsonl")))
    # a failed profile goes where a failed text bio goes: a dead letter of no utterance, its call still labelled
    assert sorted((d["stage"], d["record"], d["speaker"], d["utterances"]) for d in dead) == [
        ("bios", "fails", "Amy", 0),
        ("bios", "fails", "Zed", 0),
    ]

    profiles = made_here(llm, cache, "scores", LABELS)  # `bioserc bios --profile scores --dataset` (LABELS)
    assert {len(v) for v in profiles.values()} == {len(LABELS)}
    expected = predict(BiosercBert.from_pretrained(models["scores"]), CONVS, profiles)
    rows = rows_in_order(tmp_path / "torch", expected)
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert np.allclose(probs(rows), [p.probs for p in expected], atol=1e-5)

    second = label(models, tmp_path / "onnx", "scores_onnx", *generate)
    assert (second.counters["bios_cached"], second.counters.get("bios_generated", 0)) == (5, 0)
    again = rows_in_order(tmp_path / "onnx", expected)
    assert [r["label"] for r in again] == [r["label"] for r in rows]
    assert np.allclose(probs(again), probs(rows), atol=1e-5)


def test_label_makes_latent_profiles_as_bioserc_bios_does_without_a_label_list(models, llm, flaky_llm, tmp_path):
    cache = tmp_path / "cache"
    outcome = label(models, tmp_path / "out", "latent", "--bio-model", llm, "--bio-cache", str(cache), "--allow-skips")
    assert (outcome.counters["bios_generated"], outcome.counters["bios_dead_lettered"]) == (5, 2)
    profiles = made_here(llm, cache, "latent", None)
    expected = predict(BiosercBert.from_pretrained(models["latent"]), CONVS, profiles)
    rows = rows_in_order(tmp_path / "out", expected)
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert np.allclose(probs(rows), [p.probs for p in expected], atol=1e-5)


def test_profiles_the_model_cannot_read_are_clear_errors_before_any_work(models, tmp_path, capsys):
    from bioserc.pipelines import label_pipeline
    from bioserc.pipelines.label_steps import ParseBio

    latent = profile_file(tmp_path / "latent.jsonl", "latent", LATENT_DIM)
    rows = vector_rows(CONVS, "scores", len(LABELS))
    short = write_jsonl(tmp_path / "short.jsonl", [rows[0], {**rows[1], "vector": [0.2, 0.8]}])
    for bios, message in [
        (
            latent,
            r"latent\.jsonl: record line 1, field 'profile': 'latent' rows cannot feed a model of profile "
            r"scores",
        ),
        (
            short,
            r"short\.jsonl: record line 2, field 'vector': has 2 entries, expected 4 \(the model's "
            r"profile_dim\)",
        ),
    ]:
        out = tmp_path / "out"
        assert (
            label_pipeline.main([models["calls"], "-o", str(out), "--model", models["scores_onnx"], "--bios", bios])
            == 2
        )
        assert re.search(message, capsys.readouterr().err)
        assert not (out / "utterances.jsonl").exists()
    # A remote file is read by the pipeline's workers, with the same rule
    line = json.dumps(vector_rows(CONVS, "latent", LATENT_DIM)[0])
    with pytest.raises(RecordError, match=r"record conversation c1 speaker Ann, field 'profile': 'latent' rows"):
        list(ParseBio("gs://bucket/bios.jsonl", "scores", len(LABELS)).process(line))
    with pytest.raises(SystemExit, match="profile latent needs the transformers backend"):
        label(models, tmp_path / "out", "latent", "--bio-backend", "onnx")
