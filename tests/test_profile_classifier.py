"""The BERT classifier on scores/latent speaker profiles: vectors from `bioserc bios --profile`, projected into the
bio head. Tiny random encoder and generated corpus from test_bert_classifier; the bios.jsonl fixtures are written here.

    .venv/bin/python -m pytest -q tests/test_profile_classifier.py
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from test_bert_classifier import MELD, make_corpus, make_encoder, write_jsonl

from bioserc.errors import RecordError
from bioserc.models import BiosercBert, BiosercBertConfig, Collator, load_bios
from bioserc.models.predict import predict
from bioserc.training.checkpoint import save_best
from bioserc.training.evaluate import evaluate
from bioserc.training.train_bert import load_config, train


pytestmark = pytest.mark.usefixtures("one_thread")

LATENT_DIM = 48  # a hidden size, wider than the tiny encoder's 32


def vector_rows(conversations, profile: str, dim: int, seed: int = 1) -> list[dict]:
    """bios.jsonl rows as `bioserc bios --profile scores|latent` writes them; scores sum to 1 like probabilities."""
    rng = random.Random(seed)
    rows = []
    for c in conversations:
        for s in c.speakers:
            vector = [rng.random() for _ in range(dim)]
            if profile == "scores":
                vector = [round(v / sum(vector), 6) for v in vector]
            rows.append(
                {
                    "conversation_id": c.id,
                    "speaker": s,
                    "bio": "",
                    "profile": profile,
                    "vector": vector,
                    "prompt_version": "scores-v1",
                    "model": "tiny-llm",
                    "mode": "per-speaker",
                }
            )
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("profiles")
    convs = make_corpus()
    train_convs, dev_convs = convs[:14], convs[14:]
    out = {
        "convs": convs,
        "encoder": make_encoder(root / "encoder", layers=2),
        "train": write_jsonl(root / "train.jsonl", (c.to_dict() for c in train_convs)),
        "dev": write_jsonl(root / "dev.jsonl", (c.to_dict() for c in dev_convs)),
    }
    for profile, dim in (("scores", len(MELD)), ("latent", LATENT_DIM)):
        rows = vector_rows(convs, profile, dim)
        out[profile] = {(r["conversation_id"], r["speaker"]): r["vector"] for r in rows}
        n_train = sum(len(c.speakers) for c in train_convs)
        out[f"{profile}_train"] = write_jsonl(root / f"{profile}_train.jsonl", rows[:n_train])
        out[f"{profile}_dev"] = write_jsonl(root / f"{profile}_dev.jsonl", rows[n_train:])
    return out


def train_config(data: dict, out: Path, profile: str, **kw):
    settings = {
        "train_data": data["train"],
        "dev_data": data["dev"],
        "train_bios": data[f"{profile}_train"],
        "dev_bios": data[f"{profile}_dev"],
        "encoder": data["encoder"],
        "profile": profile,
        "max_length": 64,
        "batch_size": 2,
        "lr_encoder": 1e-3,
        "lr_head": 3e-3,
        "warmup_ratio": 0.0,
        "patience": 0,
        "output_dir": str(out),
        "device": "cpu",
        **kw,
    }
    return load_config(None, **settings)


def make_model(data: dict, profile: str = "scores", bio_mode: str = "mlp") -> BiosercBert:
    torch.manual_seed(0)
    dim = len(MELD) if profile == "scores" else LATENT_DIM
    return BiosercBert.from_encoder(
        BiosercBertConfig(encoder=data["encoder"], bio_mode=bio_mode, profile=profile, profile_dim=dim, max_length=64)
    )


@pytest.mark.parametrize(
    ("profile", "dim", "bio_mode"), [("scores", len(MELD), "mlp"), ("latent", LATENT_DIM, "attn")]
)
def test_one_epoch_on_vectors_saves_reloads_and_evaluates_identically(data, tmp_path, profile, dim, bio_mode):
    result = train(train_config(data, tmp_path / "run", profile, epochs=1, bio_mode=bio_mode))
    best = result["best_dir"]
    saved = json.loads((Path(best) / "config.json").read_text())
    assert (saved["profile"], saved["profile_dim"], saved["bio_mode"]) == (profile, dim, bio_mode)
    model = BiosercBert.from_pretrained(best, "cpu")
    assert model.profile_proj[1].in_features == dim
    model.save_pretrained(str(tmp_path / "again"))
    again = BiosercBert.from_pretrained(str(tmp_path / "again"))
    convs = data["convs"][14:]
    assert predict(model, convs, data[profile], batch_size=2) == predict(again, convs, data[profile], batch_size=2)
    report = evaluate(best, data["dev"], data[f"{profile}_dev"])
    assert report["weighted_f1"] == pytest.approx(result["best_dev_weighted_f1"]) and report["bios_missing"] == 0


def test_profile_or_size_mismatches_name_the_file_line_and_field(data, tmp_path):
    rows = vector_rows(data["convs"][:2], "scores", len(MELD))
    text = {"conversation_id": "conv0", "speaker": "SPEAKER_0", "bio": "SPEAKER_0 is calm", "profile": "text"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [rows[0], text])
    with pytest.raises(RecordError, match=r"mixed\.jsonl: record line 2, field 'profile': 'text' rows cannot feed"):
        load_bios(path, "scores")
    with pytest.raises(RecordError, match=r"mixed\.jsonl: record line 1, field 'profile': 'scores' rows"):
        load_bios(path)  # a text model
    with pytest.raises(RecordError, match=r"record line 1, field 'profile': 'scores' rows .* profile latent"):
        load_bios(path, "latent")
    short = write_jsonl(tmp_path / "short.jsonl", [rows[0], rows[1], {**rows[2], "vector": [0.5, 0.5]}])
    with pytest.raises(
        RecordError,
        match=r"short\.jsonl: record line 3, field 'vector': has 2 entries, expected 7 "
        r"\(the first vector, .*short\.jsonl line 1\)",
    ):
        load_bios(short, "scores")
    with pytest.raises(
        RecordError,
        match=r"short\.jsonl: record line 1, field 'vector': has 7 entries, expected 9 "
        r"\(the model's profile_dim\)",
    ):
        load_bios(short, "scores", 9)
    broken = write_jsonl(tmp_path / "broken.jsonl", [rows[0], {**rows[1], "vector": [1.0, float("nan")]}])
    with pytest.raises(RecordError, match=r"broken\.jsonl: record line 2, field 'vector': must be .* finite"):
        load_bios(broken, "scores")
    failed = write_jsonl(tmp_path / "failed.jsonl", [rows[0], {**rows[1], "vector": None, "error": "prefill failed"}])
    assert list(load_bios(failed, "scores")) == [("conv0", rows[0]["speaker"])]  # dead letters are skipped

    narrow = write_jsonl(tmp_path / "dev5.jsonl", vector_rows(data["convs"][14:], "scores", 5))
    with pytest.raises(RecordError, match=r"dev5\.jsonl: record line 1, field 'vector': has 5 entries, expected 7"):
        train(train_config(data, tmp_path / "run", "scores", dev_bios=narrow, max_steps=1))  # the train size
    model = make_model(data, "scores")
    save_best(str(tmp_path / "best"), model, {"weighted_f1": 0.0}, 0)
    with pytest.raises(RecordError, match=r"latent_dev\.jsonl: record line 1, field 'profile': 'latent' rows"):
        evaluate(str(tmp_path / "best"), data["dev"], data["latent_dev"])


def test_a_speaker_without_a_vector_gets_zeros_and_is_counted(data, caplog):
    model = make_model(data, "scores").eval()
    conv = next(c for c in data["convs"] if len(c.speakers) > 1)
    absent = conv.speakers[-1]
    bios = {k: v for k, v in data["scores"].items() if k != (conv.id, absent)}
    collator = Collator(model.tokenizer, model.config)
    batch = collator([conv], bios)
    assert batch.bio_missing == [(conv.id, absent)]
    assert set(batch.inputs) >= {"speaker_profile", "speaker_mask"} and "bio_input_ids" not in batch.inputs
    assert batch.inputs["speaker_profile"][0, -1].abs().sum() == 0 and batch.inputs["speaker_mask"][0].all()
    zeros = collator([conv], {**bios, (conv.id, absent): [0.0] * len(MELD)})
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.inputs), model(**zeros.inputs), atol=0, rtol=0)
    with caplog.at_level(logging.WARNING, logger="bioserc.models.predict"):
        predict(model, [conv], bios)
    assert "1 speaker(s) had no bio and were classified with a zero scores vector" in caplog.text
    with pytest.raises(ValueError, match=f"conversation {conv.id} speaker {absent}: .* 7 numbers, got 3 numbers"):
        collator([conv], {**bios, (conv.id, absent): [0.1, 0.2, 0.7]})


@pytest.mark.parametrize("bio_mode", ["mlp", "attn"])
def test_gradients_reach_the_projection_and_a_changed_vector_changes_the_logits(data, bio_mode):
    model = make_model(data, "latent", bio_mode).train()
    convs = data["convs"][:3]
    collator = Collator(model.tokenizer, model.config)
    batch = collator(convs, data["latent"])
    logits = model(**batch.inputs)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert any(name.startswith("profile_proj.") for name, _ in model.named_parameters())

    model.eval()
    conv = convs[0]
    speaker = conv.utterances[0].speaker
    changed = {**data["latent"], (conv.id, speaker): [-v for v in data["latent"][conv.id, speaker]]}
    with torch.no_grad():
        before = model(**collator([conv], data["latent"]).inputs)[0]
        after = model(**collator([conv], changed).inputs)[0]
    own = torch.tensor([u.speaker == speaker for u in conv.utterances])
    assert (before[own] - after[own]).abs().amax(-1).min() > 0  # every utterance of that speaker moves
    if bio_mode == "mlp" and not own.all():  # the mlp head reads each utterance's own speaker only
        torch.testing.assert_close(before[~own], after[~own], atol=0, rtol=0)


def test_text_profile_reads_text_and_emotion_bios_through_the_encoder(data, tmp_path):
    rows = [
        {"conversation_id": "a", "speaker": "S", "bio": "S is calm", "profile": "text"},
        {"conversation_id": "a", "speaker": "T", "bio": "T is nervous", "profile": "emotion"},
        {"conversation_id": "a", "speaker": "U", "bio": "U is kind"},
    ]  # rows written before profiles existed
    assert load_bios(write_jsonl(tmp_path / "bios.jsonl", rows)) == {
        ("a", "S"): "S is calm",
        ("a", "T"): "T is nervous",
        ("a", "U"): "U is kind",
    }
    torch.manual_seed(0)
    model = BiosercBert.from_encoder(BiosercBertConfig(encoder=data["encoder"], bio_mode="attn", max_length=64))
    assert (model.config.profile, model.config.profile_dim) == ("text", 0)
    assert not any(name.startswith("profile_proj.") for name, _ in model.named_parameters())
    batch = Collator(model.tokenizer, model.config)(data["convs"][:2], {})
    assert "bio_input_ids" in batch.inputs and "speaker_profile" not in batch.inputs


def test_profile_settings_are_checked():
    with pytest.raises(ValueError, match="profile scores needs profile_dim"):
        BiosercBertConfig(profile="scores")
    with pytest.raises(ValueError, match="profile must be one of"):
        BiosercBertConfig(profile="emotion", profile_dim=3)  # emotion bios are text: profile text reads them
    with pytest.raises(ValueError, match="profile must be one of"):
        load_config(None, profile="vectors")
    assert BiosercBertConfig(profile="latent", bio_mode="none").profile_dim == 0  # bio_mode none reads no profile
    assert load_config(None, profile="scores", bio_mode="none").model_config().profile == "text"


def test_the_manifest_states_the_profile_and_must_agree_with_the_config(data, tmp_path):
    """Pipelines plan the speaker inputs (bio text or vectors) from the manifest, the model computes with config.json:
    they must agree. `bioserc label` takes a profile model (tests/test_profile_pipeline.py feeds it)."""
    from bioserc.artifacts import ArtifactError, read_manifest, verify_artifact, write_manifest
    from bioserc.pipelines.classifier_handler import check_model

    best = tmp_path / "best"
    save_best(str(best), make_model(data), {"weighted_f1": 0.5}, step=1)
    manifest = verify_artifact(str(best), "pytorch-classifier")
    assert (manifest["profile"], manifest["profile_dim"]) == ("scores", len(MELD))
    assert check_model(str(best))["profile"] == "scores"
    fields = {k: v for k, v in read_manifest(str(best)).items() if k not in ("files", "kind", "schema_version")}
    write_manifest(str(best), "pytorch-classifier", **{**fields, "profile": "text", "profile_dim": 0})
    with pytest.raises(ArtifactError, match=r"profile \('text', 0\) differs from config.json's \('scores', 7\)"):
        verify_artifact(str(best), "pytorch-classifier")
    with pytest.raises(ArtifactError, match=r"profile \('text', 0\) differs"):
        check_model(str(best))
